"""The ``tensorrt`` backend: Torch-TensorRT (dynamo IR), C++ runtime, saved as an ExportedProgram.

``torch_tensorrt`` is imported only when this backend is used: importing it on a host without
a GPU raises (it queries the device at import).
"""

from __future__ import annotations

import dataclasses
import platform
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.backends.base import Backend, CompiledModel, PolicyReport, RefitReport, RefitRequest
from pipeline.backends.engines import (
    ScopedMode,
    apply_to_engines,
    find_engines,
    is_engine,
    resources_held,
)
from pipeline.backends.exported import dynamic_shapes, flat_module
from pipeline.config.schema import (
    BackendKind,
    CompileConfig,
    InputSpec,
    PipelineConfig,
    RuntimeConfig,
)
from pipeline.errors import ConfigError
from pipeline.models.inputs import torch_dtype
from pipeline.timing import Stopwatch


def _torch_tensorrt() -> Any:
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
            kwargs[field.name] = value
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


class TensorRTBackend(Backend):
    """Torch-TensorRT with runtime policies restored at engine level on load."""

    kind = BackendKind.tensorrt
    artifact_name = "model.pt2"

    def __init__(self) -> None:
        self.trt = _torch_tensorrt()

    def check_config(self, config: PipelineConfig) -> None:
        compile_settings(config.compile, supported_settings())

    def environment(self) -> dict[str, str]:
        import tensorrt

        major, minor = torch.cuda.get_device_capability()
        return {
            "torch": torch.__version__,
            "torch_tensorrt": self.trt.__version__,
            "tensorrt": tensorrt.__version__,
            "tensorrt_build": "tensorrt-rtx" if is_rtx_build() else "tensorrt",
            "cuda": str(torch.version.cuda),
            "gpu": torch.cuda.get_device_name(),
            "sm": f"{major}.{minor}",
            "platform": platform.machine(),
        }

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: PipelineConfig
    ) -> CompiledModel:
        program = torch.export.export(
            model, example_inputs, dynamic_shapes=dynamic_shapes(config.model.inputs)
        )
        # Precision comes from the model and inputs being cast (build stage): TensorRT-RTX is
        # strongly typed and rejects enabled_precisions, and explicit typing gives the same
        # engine on standard TensorRT.
        module = self.trt.dynamo.compile(
            program,
            arg_inputs=self._trt_inputs(config),
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

    def save(self, compiled: CompiledModel, path: Path, specs: list[InputSpec]) -> None:
        self.trt.save(
            compiled.artifact,
            str(path),
            output_format="exported_program",
            arg_inputs=list(compiled.example_inputs),
            retrace=False,
        )

    def load(self, path: Path, device: torch.device) -> nn.Module:
        with torch.cuda.device(device):
            return flat_module(torch.export.load(str(path)))

    def refit(self, request: RefitRequest) -> RefitReport:
        watch = Stopwatch()
        with torch.cuda.device(request.device), torch.no_grad():
            with watch.lap("load"):
                program = torch.export.load(str(request.artifact))
            with watch.lap("export"):
                new_weights = torch.export.export(
                    request.model, request.example_inputs, dynamic_shapes=dynamic_shapes(request.specs)
                )
            with watch.lap("refit"):
                module = flat_module(program)
                names = [name for name, value in program.constants.items() if is_engine(value)]
                for name in names:
                    setattr(module, name, EngineSnapshot(getattr(module, name)))
                # The saved program holds its engines inline (no submodules), the form that
                # refit_module_weights handles only with in_place=False: it refits a copy.
                refitted = self.trt.dynamo.refit_module_weights(
                    module, new_weights, in_place=False, verify_output=False
                )
            # Swap the refitted engines into the loaded program and save that: its graph,
            # signature and input constraints stay exactly those of the original bundle.
            for name in names:
                program.constants[name] = getattr(refitted, name)
            with watch.lap("save"):
                torch.export.save(program, str(request.target))
        return RefitReport(engines=len(names), seconds=watch.seconds)

    def apply_policy(self, module: nn.Module, policy: RuntimeConfig) -> PolicyReport:
        engines = find_engines(module)
        readback = apply_to_engines(engines, policy)
        return PolicyReport(
            policy=policy,
            applied=True,
            engines_configured=len(engines),
            details={"engines": readback, "cuda_graphs": policy.cuda_graphs},
        )

    def call_context(self, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        if not policy.cuda_graphs:
            return super().call_context(policy)
        runtime = self.trt.runtime
        return ScopedMode(runtime.get_cudagraphs_mode, runtime.set_cudagraphs_mode)

    def hold_resources(self, module: nn.Module, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        return resources_held(find_engines(module), policy)
