"""Random inputs drawn from the declared input specs (golden and verification sets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pipeline.config.schema import DType, InputSpec, Precision
from pipeline.models.shapes import shape_at

_TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.float32: torch.float32,
    DType.float16: torch.float16,
    DType.int32: torch.int32,
    DType.int64: torch.int64,
}


def torch_dtype(dtype: DType, precision: Precision = Precision.fp32) -> torch.dtype:
    """The torch dtype of an input; floating inputs follow the run's precision."""
    resolved = _TORCH_DTYPES[dtype]
    if resolved.is_floating_point and precision is Precision.fp16:
        return torch.float16
    return resolved


def make_inputs(
    specs: Sequence[InputSpec],
    seed: int,
    precision: Precision = Precision.fp32,
    device: torch.device | str = "cpu",
    sizes: Mapping[str, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """One seeded input set in each input's value range: at the declared (opt) shape, or with
    the dynamic dimensions named in ``sizes`` at those sizes."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        dtype = torch_dtype(spec.dtype, precision)
        shape = shape_at(spec, sizes or {})
        if dtype.is_floating_point:
            values = torch.rand(shape, generator=generator, dtype=torch.float32)
            tensor = (spec.low + (spec.high - spec.low) * values).to(dtype)
        else:
            tensor = torch.randint(int(spec.low), int(spec.high), shape, generator=generator, dtype=dtype)
        tensors.append(tensor.to(device))
    return tuple(tensors)
