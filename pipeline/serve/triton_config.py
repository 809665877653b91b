"""A Triton ``config.pbtxt`` derived from a bundle's manifest (and its golden file's shapes).

Triton's rules, as Model Navigator applies them: inputs and outputs by name with Triton data
types; ``dims`` as recorded, -1 where a dimension is dynamic; when dimension 0 of every input and
output is one and the same named dimension, that dimension is the batch: ``max_batch_size`` is
its maximum, ``dims`` leave it out and the dynamic batcher may stack requests along it.
Otherwise ``max_batch_size: 0`` and every dimension is listed.

The manifest records output shapes only at the opt shape; which output dimensions follow which
named input dimension is read from the golden sets (opt, min, max, odd), whose shapes differ
exactly where the model is dynamic. Only the safetensors header is read, never the tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from tritonclient.utils import np_to_triton_dtype

from pipeline.errors import BundleError
from pipeline.runtime.format import GOLDEN_INPUT_PREFIX, GOLDEN_NAME, GOLDEN_OUTPUT_PREFIX, OPT_SET, Manifest
from pipeline.runtime.loader import input_specs
from pipeline.runtime.types import DType, Precision, dim_names, torch_dtype
from pipeline.serve.serving import BF16_NOT_SERVED, output_name

#: The ``config.pbtxt`` parameter that names a runtime preset to load the bundle with.
RUNTIME_POLICY_PARAMETER = "runtime_policy"
#: Triton's name for a dimension whose size each request chooses.
DYNAMIC = -1


class InstanceKind(str, Enum):
    """Where Triton runs a model instance."""

    KIND_CPU = "KIND_CPU"
    KIND_GPU = "KIND_GPU"


def v2_datatype(torch_name: str) -> str:
    """KServe v2 datatype (``FP32``) of a torch dtype name (``float32`` or ``torch.float32``)."""
    name = torch_name.removeprefix("torch.")
    if name == "bfloat16":
        raise BundleError(BF16_NOT_SERVED)
    try:
        datatype = np_to_triton_dtype(np.dtype(name))
    except TypeError:  # not a numpy dtype name
        datatype = None
    if datatype is None:
        raise BundleError(f"dtype {name!r} has no Triton equivalent")
    return str(datatype)


@dataclass(frozen=True)
class TensorConfig:
    """One input or output as Triton declares it (``dims`` without the batch dimension when
    the model batches)."""

    name: str
    datatype: str  # KServe v2 name, e.g. FP32; config.pbtxt spells it TYPE_FP32
    dims: tuple[int, ...]


@dataclass(frozen=True)
class InstanceGroup:
    """``count`` instances of the model on each of ``gpus`` (all visible GPUs when empty), or on
    the CPU."""

    kind: InstanceKind
    count: int = 1
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class TritonModelConfig:
    """What ``config.pbtxt`` says, in typed form."""

    name: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    max_batch_size: int = 0
    #: The named dimension that Triton batches along (None: the model does not batch).
    batch_dim: str | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_groups: tuple[InstanceGroup, ...] = field(default_factory=tuple)
    max_queue_delay_microseconds: int = 0

    #: A runtime preset the backend loads the bundle with instead of the recorded policy.
    runtime_policy: str | None = None

    def to_proto(self) -> Any:
        """The configuration as Triton's own protobuf message (``inference.ModelConfig``)."""
        from tritonclient.grpc import model_config_pb2 as schema

        config = schema.ModelConfig(name=self.name, backend="python", max_batch_size=self.max_batch_size)
        for tensors, field_of in ((self.inputs, config.input), (self.outputs, config.output)):
            for tensor in tensors:
                field_of.add(name=tensor.name, data_type=f"TYPE_{tensor.datatype}", dims=tensor.dims)
        if self.max_batch_size > 0:
            config.dynamic_batching.preferred_batch_size.extend(self.preferred_batch_sizes)
            config.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_microseconds
        for group in self.instance_groups:
            config.instance_group.add(kind=group.kind.value, count=group.count, gpus=group.gpus)
        if self.runtime_policy is not None:
            config.parameters[RUNTIME_POLICY_PARAMETER].string_value = self.runtime_policy
        return config

    def to_pbtxt(self) -> str:
        """``config.pbtxt``: the configuration in protobuf text format."""
        from google.protobuf import text_format

        return str(text_format.MessageToString(self.to_proto()))

    def to_json(self) -> str:
        """The configuration as JSON, what Triton's model-control API takes to load a model with it."""
        from google.protobuf import json_format

        return str(json_format.MessageToJson(self.to_proto(), preserving_proto_field_name=True))


@dataclass(frozen=True)
class _NamedDim:
    name: str
    low: int
    high: int
    opt: int


def triton_config(
    manifest: Manifest,
    golden_shapes: Mapping[str, Sequence[int]],
    *,
    instances_per_device: int = 1,
    gpus: Sequence[int] = (),
    max_queue_delay_microseconds: int = 2000,
) -> TritonModelConfig:
    """The Triton configuration of a bundle (``golden_shapes``: :func:`read_golden_shapes`).

    CUDA bundles get one ``KIND_GPU`` instance group (on ``gpus``, or on every GPU Triton sees),
    CPU bundles a ``KIND_CPU`` one.
    """
    specs = input_specs(manifest)
    precision = Precision(manifest.precision)
    named: dict[str, _NamedDim] = {}
    input_dims: list[list[str | None]] = []
    for spec in specs:
        names = dim_names(spec)
        input_dims.append(names)
        low, high = spec.min_shape or spec.shape, spec.max_shape or spec.shape
        for index, name in enumerate(names):
            if name is not None:
                named.setdefault(name, _NamedDim(name, low[index], high[index], spec.shape[index]))
    output_dims = _output_dim_names(manifest, specs_dims=input_dims, golden_shapes=golden_shapes)

    first_dims = {dims[0] if dims else None for dims in [*input_dims, *output_dims]}
    batch_dim = first_dims.pop() if len(first_dims) == 1 else None
    batching = batch_dim is not None and batch_dim != "?"

    def is_dynamic(name: str | None) -> bool:
        return name == "?" or (name is not None and named[name].low != named[name].high)

    def dims_of(shape: Sequence[int], names: Sequence[str | None]) -> tuple[int, ...]:
        values = [DYNAMIC if is_dynamic(name) else size for size, name in zip(shape, names, strict=True)]
        return tuple(values[1:] if batching else values)

    inputs = tuple(
        TensorConfig(
            spec.name, v2_datatype(str(torch_dtype(DType(spec.dtype), precision))), dims_of(spec.shape, names)
        )
        for spec, names in zip(specs, input_dims, strict=True)
    )
    outputs = tuple(
        TensorConfig(
            output_name(entry, index), v2_datatype(str(entry["dtype"])), dims_of(entry["shape"], names)
        )
        for index, (entry, names) in enumerate(zip(manifest.outputs, output_dims, strict=True))
    )
    kind = InstanceKind.KIND_GPU if manifest.device.startswith("cuda") else InstanceKind.KIND_CPU
    group = InstanceGroup(kind, instances_per_device, tuple(gpus) if kind is InstanceKind.KIND_GPU else ())
    if not batching or batch_dim is None:
        return TritonModelConfig(manifest.model_name, inputs, outputs, instance_groups=(group,))
    dim = named[batch_dim]
    # A preferred size of 1 would make the batcher send every request alone: only an opt batch
    # above 1 (what the engines were tuned for) is worth waiting for.
    preferred = (dim.opt,) if dim.opt > 1 else ()
    return TritonModelConfig(
        manifest.model_name,
        inputs,
        outputs,
        max_batch_size=dim.high,
        batch_dim=batch_dim,
        preferred_batch_sizes=preferred,
        instance_groups=(group,),
        max_queue_delay_microseconds=max_queue_delay_microseconds,
    )


def _output_dim_names(
    manifest: Manifest, specs_dims: Sequence[Sequence[str | None]], golden_shapes: Mapping[str, Sequence[int]]
) -> list[list[str | None]]:
    """For each output dimension: the named input dimension it follows across the golden sets,
    None when it is the same size in every set, ``"?"`` when it varies with no input dimension."""
    sets = sorted({_set_of(key) for key in golden_shapes})
    # Size of each named input dimension in each golden set.
    named_sizes: dict[str, tuple[int, ...]] = {}
    for spec, dims in zip(manifest.inputs, specs_dims, strict=True):
        for index, name in enumerate(dims):
            if name is None or name in named_sizes:
                continue
            named_sizes[name] = tuple(
                golden_shapes[_key(set_name, f"{GOLDEN_INPUT_PREFIX}{spec['name']}")][index]
                for set_name in sets
            )
    result: list[list[str | None]] = []
    for index, entry in enumerate(manifest.outputs):
        rank = len(entry["shape"])
        per_set = [golden_shapes.get(_key(set_name, f"{GOLDEN_OUTPUT_PREFIX}{index}")) for set_name in sets]
        if any(shape is None or len(shape) != rank for shape in per_set):
            raise BundleError(f"{GOLDEN_NAME}: output {index} is missing or has another rank in a golden set")
        names: list[str | None] = []
        for axis in range(rank):
            sizes = tuple(shape[axis] for shape in per_set if shape is not None)
            if len(set(sizes)) == 1:
                names.append(None)
                continue
            match = [name for name, values in named_sizes.items() if values == sizes]
            names.append(match[0] if match else "?")
        result.append(names)
    return result


def _set_of(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else OPT_SET


def _key(set_name: str, tensor: str) -> str:
    return tensor if set_name == OPT_SET else f"{set_name}/{tensor}"


def read_golden_shapes(root: Path) -> dict[str, list[int]]:
    """Shape of every tensor in a bundle's golden file, read from its header only."""
    with safe_open(str(root / GOLDEN_NAME), framework="pt") as golden:
        return {key: list(golden.get_slice(key).get_shape()) for key in golden.keys()}  # noqa: SIM118


def v2_metadata(config: TritonModelConfig, platform: str) -> dict[str, object]:
    """KServe v2 model metadata as Triton answers it (``-1`` for the batch dimension)."""

    def tensors(items: Sequence[TensorConfig]) -> list[dict[str, object]]:
        batch = [DYNAMIC] if config.max_batch_size > 0 else []
        return [{"name": t.name, "datatype": t.datatype, "shape": [*batch, *t.dims]} for t in items]

    return {
        "name": config.name,
        "versions": ["1"],
        "platform": platform,
        "inputs": tensors(config.inputs),
        "outputs": tensors(config.outputs),
    }
