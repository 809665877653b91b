"""The ``tensorrt`` backend: Torch-TensorRT (dynamo IR) compiles; bundles hold raw engines.

``torch_tensorrt`` is imported only when this backend is used: importing it on a host without
a GPU raises (it queries the device at import), and loading bundles never needs it
(:mod:`pipeline.runtime.tensorrt`).
"""

from __future__ import annotations

import base64
import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.backends.base import Backend, CompiledModel, RefitReport, RefitRequest, SavedArtifact
from pipeline.backends.exported import dynamic_shapes
from pipeline.config.schema import CompileConfig, InputSpec, PipelineConfig, Precision
from pipeline.errors import BackendUnavailableError, ConfigError
from pipeline.models.inputs import torch_dtype
from pipeline.quantization.calibrate import export_mode
from pipeline.runtime.engine_graph import EngineDescription, EngineRecord, split_engines
from pipeline.runtime.engine_layout import LAYOUT
from pipeline.runtime.engines import find_engines
from pipeline.runtime.tensorrt import TensorRTRuntime, rtx_settings_refused, runtime_library_loaded_alone
from pipeline.timing import Stopwatch


def _torch_tensorrt() -> Any:
    if runtime_library_loaded_alone():
        # Its import would load the full library and register the engine operators again: the
        # process aborts in C++ (seen on the H200), so say it here instead.
        raise BackendUnavailableError(
            "torch_tensorrt cannot be imported after a TensorRT bundle was loaded in this process "
            "(its runtime library is in already); build first, or build in another process"
        )
    import torch_tensorrt

    return torch_tensorrt


class EngineSnapshot:
    """An engine's serialized state, read once, standing in for the engine during a refit.

    ``refit_module_weights`` (Torch-TensorRT 2.11) deep-copies the module and then reads each
    engine's state three times (settings, engine bytes, weight map). On a live engine every read
    serializes and base64-encodes the whole engine, hundreds of MB for BERT-base. It only ever
    reads the state and then builds a new engine from it, so a snapshot of that state serves
    (anything else is passed to the engine). On BERT-base fp16 (H200) the refit call took 34 s
    instead of 41 s.
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._state = engine.__getstate__()

    def __getstate__(self) -> Any:
        return self._state

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never forward the snapshot's own (possibly unset) fields
            raise AttributeError(name)
        return getattr(self._engine, name)

    def __deepcopy__(self, memo: dict[int, Any]) -> EngineSnapshot:
        return self  # immutable


def describe_engine_object(engine: Any, outputs: int) -> EngineDescription:
    """An engine object's serialized fields with the engine as raw bytes (its pickled state
    carries them base64-encoded)."""
    state = engine.__getstate__()
    if isinstance(state[0], list | tuple):
        state = state[0]  # a script object's state is (its pickled list, its class name)
    state = list(state)
    state[LAYOUT.engine] = base64.b64decode(state[LAYOUT.engine])
    return EngineDescription(serialized_info=state, engine_index=LAYOUT.engine, outputs=outputs)


def describe_engine_module(module: Any) -> EngineDescription | None:
    """The description of a ``TorchTensorRTModule`` (None for any other module), from its
    engine's serialized form: the public one, as ``torch_tensorrt.save`` pickles it."""
    from torch_tensorrt.dynamo.runtime import TorchTensorRTModule

    if not isinstance(module, TorchTensorRTModule):
        return None
    return describe_engine_object(module.engine, len(module.output_binding_names))


def is_rtx_build() -> bool:
    """True when the installed Torch-TensorRT is the TensorRT-RTX build (strongly typed)."""
    features = _torch_tensorrt()._features.ENABLED_FEATURES
    return bool(getattr(features, "tensorrt_rtx", False))


def supported_settings() -> set[str]:
    """Field names of the installed ``CompilationSettings``."""
    from torch_tensorrt.dynamo._settings import CompilationSettings

    return {f.name for f in dataclasses.fields(CompilationSettings)}


def compile_settings(settings: CompileConfig, supported: set[str]) -> dict[str, Any]:
    """Keyword arguments for ``torch_tensorrt.dynamo.compile``.

    A setting the installed version lacks is dropped while it holds its default and rejected
    (:class:`ConfigError`) when the config asks for anything else.
    """
    defaults = CompileConfig()
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(CompileConfig):
        value = getattr(settings, field.name)
        if field.name in supported:
            kwargs[field.name] = value.value if isinstance(value, Enum) else value
        elif value != getattr(defaults, field.name):
            raise ConfigError(
                f"compile.{field.name}={value}: not supported by the installed torch_tensorrt "
                f"({_torch_tensorrt().__version__}); remove it or upgrade"
            )
    if kwargs.get("optimization_level") is None:
        kwargs.pop("optimization_level", None)
    # Bundles need the C++ runtime: only its engines survive serialization.
    if "use_python_runtime" in supported:
        kwargs["use_python_runtime"] = False
    return kwargs


def precision_settings(precision: Precision, supported: set[str]) -> dict[str, Any]:
    """Compile settings a precision adds: bf16 and the quantized precisions build with explicit
    typing (the types come from the cast model and its Q/DQ nodes; never ``enabled_precisions``,
    which the RTX build refuses). fp32 and fp16 engines stay as they were built before."""
    if precision in (Precision.fp32, Precision.fp16) or "use_explicit_typing" not in supported:
        return {}
    return {"use_explicit_typing": True}


class TensorRTBackend(TensorRTRuntime, Backend):
    """Torch-TensorRT compiles; bundles hold each engine as raw bytes beside the calling graph."""

    graph_file = "model/graph.pt"

    def __init__(self) -> None:
        self.trt = _torch_tensorrt()

    def check_config(self, config: PipelineConfig) -> None:
        compile_settings(config.compile, supported_settings())
        if not is_rtx_build() and (
            refused := rtx_settings_refused(
                config.runtime, "the installed Torch-TensorRT is standard TensorRT"
            )
        ):
            raise refused

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: PipelineConfig
    ) -> CompiledModel:
        # A quantized model's quantizers export as tensorrt.quantize_op only in ModelOpt's mode.
        with export_mode(config.precision):
            program = torch.export.export(
                model, example_inputs, dynamic_shapes=dynamic_shapes(config.model.inputs)
            )
        # Precision comes from the model and inputs being cast (build stage): TensorRT-RTX is
        # strongly typed and rejects enabled_precisions, and explicit typing gives the same
        # engine on standard TensorRT.
        module = self.trt.dynamo.compile(
            program,
            arg_inputs=self._trt_inputs(config),
            **precision_settings(config.precision, supported_settings()),
            **compile_settings(config.compile, supported_settings()),
        )
        return CompiledModel(
            module=module,
            artifact=module,
            engine_count=len(find_engines(module)),
            example_inputs=example_inputs,
        )

    def _trt_inputs(self, config: PipelineConfig) -> list[Any]:
        inputs = []
        for spec in config.model.inputs:
            dtype = torch_dtype(spec.dtype, config.precision)
            inputs.append(
                self.trt.Input(
                    min_shape=spec.min_shape or spec.shape,
                    opt_shape=spec.shape,
                    max_shape=spec.max_shape or spec.shape,
                    dtype=dtype,
                    name=spec.name,
                )
            )
        return inputs

    def save(self, compiled: CompiledModel, root: Path, specs: list[InputSpec]) -> SavedArtifact:
        split = split_engines(compiled.module, describe_engine_module)
        return _write_split(root, self.graph_file, split.graph_bytes, split.engines)

    def refit(self, request: RefitRequest) -> RefitReport:
        watch = Stopwatch()
        with torch.cuda.device(request.device), torch.no_grad():
            with watch.lap("load"):
                # Refit works on Torch-TensorRT's engine objects: the C++ runtime's.
                module = self._load_cpp(request.artifact, request.files, request.device)
            with watch.lap("export"):
                new_weights = torch.export.export(
                    request.model, request.example_inputs, dynamic_shapes=dynamic_shapes(request.specs)
                )
            with watch.lap("refit"):
                records = request.artifact.engines
                for record in records:
                    setattr(module, record.attribute, EngineSnapshot(getattr(module, record.attribute)))
                # The loaded graph holds its engines inline (no submodules), the form that
                # refit_module_weights handles only with in_place=False: it refits a copy.
                refitted = self.trt.dynamo.refit_module_weights(
                    module, new_weights, in_place=False, verify_output=False
                )
            # Same graph, new engines: the graph file is the parent's, byte for byte.
            with watch.lap("save"):
                engines = [
                    (record, describe_engine_object(getattr(refitted, record.attribute), record.outputs))
                    for record in records
                ]
                artifact = _write_split(
                    request.target,
                    request.artifact.model_file,
                    request.files.read(request.artifact.model_file),
                    [
                        (
                            dataclasses.replace(record, serialized_info=d.fields_without_engine()),
                            d.engine_bytes,
                        )
                        for record, d in engines
                    ],
                )
        return RefitReport(engines=len(records), artifact=artifact, seconds=watch.seconds)


def _write_split(
    root: Path, graph_file: str, graph_bytes: bytes, engines: list[tuple[EngineRecord, bytes]]
) -> SavedArtifact:
    for relative, data in [(graph_file, graph_bytes), *((r.file, b) for r, b in engines)]:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return SavedArtifact(model_file=graph_file, engines=[record for record, _ in engines])
