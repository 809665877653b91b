"""Random inputs drawn from the declared input specs (golden and verification sets)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pipeline.models.shapes import shape_at
from pipeline.runtime.types import InputSpec, Padding, Precision, torch_dtype


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
        if spec.padding is not None:
            tensor = padding_mask(shape, spec.padding, generator).to(dtype)
        elif dtype == torch.bool:
            tensor = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).bool()
        elif dtype.is_floating_point:
            values = torch.rand(shape, generator=generator, dtype=torch.float32)
            tensor = (spec.low + (spec.high - spec.low) * values).to(dtype)
        else:
            tensor = torch.randint(int(spec.low), int(spec.high), shape, generator=generator, dtype=dtype)
        tensors.append(tensor.to(device))
    return tuple(tensors)


def padding_mask(shape: Sequence[int], side: Padding, generator: torch.Generator) -> torch.Tensor:
    """A padding mask of ``shape`` (int64 1s and 0s): each row along the last dimension holds a
    random number of tokens, at least one, padded on ``side``; with more than one row the first
    is full-length (a batch padded to its longest row)."""
    length = shape[-1] if shape else 1
    rows = 1
    for size in shape[:-1]:
        rows *= size
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    if rows > 1:
        lengths[0] = length
    positions = torch.arange(length).expand(rows, length)
    if side is Padding.left:
        positions = positions.flip(-1)
    return (positions < lengths[:, None]).to(torch.int64).reshape(list(shape))
