"""Random inputs drawn from the declared input specs (golden and verification sets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pipeline.models.shapes import shape_at
from pipeline.runtime.types import InputSpec, Precision, torch_dtype


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
