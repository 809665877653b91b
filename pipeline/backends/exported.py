"""Helpers shared by the backends that serialize through ``torch.export``."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from pipeline.config.schema import InputSpec


def dynamic_shapes(specs: list[InputSpec]) -> tuple[tuple[dict[int, Any], ...]] | None:
    """``torch.export`` dynamic-shape spec for inputs whose min and max shapes differ.

    Shaped for :class:`PositionalAdapter`'s ``forward(*args)``: one entry, the args tuple.
    """
    shapes = []
    for spec in specs:
        dims: dict[int, Any] = {}
        low = spec.min_shape or spec.shape
        high = spec.max_shape or spec.shape
        for index, (lo, hi) in enumerate(zip(low, high, strict=True)):
            if lo != hi:
                dims[index] = torch.export.Dim(f"{spec.name}_dim{index}", min=lo, max=hi)
        shapes.append(dims)
    return (tuple(shapes),) if any(shapes) else None


def unguarded_module(program: torch.export.ExportedProgram) -> nn.Module:
    """``program.module()`` without the per-call guard function and input-constraint pre-hooks.

    Both re-check on every call what the loaded model's own input check (see
    :mod:`pipeline.loaded`) already guarantees; on a 1 ms engine they cost ~0.2 ms a call.
    """
    if "check_guards" in inspect.signature(program.module).parameters:
        module = program.module(check_guards=False)
    else:
        module = program.module()
    module._forward_pre_hooks.clear()
    module._forward_pre_hooks_with_kwargs.clear()
    return module
