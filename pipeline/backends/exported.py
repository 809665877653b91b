"""Helpers shared by the backends that serialize through ``torch.export``."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.models.shapes import dynamic_dims
from pipeline.runtime.types import InputSpec, dim_names


def dynamic_shapes(specs: list[InputSpec]) -> tuple[tuple[dict[int, Any], ...]] | None:
    """``torch.export`` dynamic-shape spec: one ``Dim`` per dynamic dimension name, shared by
    every input that uses the name (see :mod:`pipeline.models.shapes`).

    Shaped for :class:`PositionalAdapter`'s ``forward(*args)``: one entry, the args tuple.
    """
    dims = {
        name: torch.export.Dim(name, min=dim.min, max=dim.max) for name, dim in dynamic_dims(specs).items()
    }
    shapes = [
        {index: dims[name] for index, name in enumerate(dim_names(spec)) if name is not None}
        for spec in specs
    ]
    return (tuple(shapes),) if any(shapes) else None
