"""One calling convention for every model: positional tensors in, a tuple of tensors out.

Models from transformers take keyword arguments and return ``ModelOutput`` objects; torchvision
models take one tensor and return one. Compilers, verification and bundles all want the same
flat form, so the build stage wraps every model in :class:`PositionalAdapter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


def flatten_outputs(outputs: Any) -> tuple[torch.Tensor, ...]:
    """Flatten a model's return value (tensor, tuple, list, dict or ModelOutput) to tensors."""
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if hasattr(outputs, "to_tuple"):
        outputs = outputs.to_tuple()
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, Sequence):
        flat: list[torch.Tensor] = []
        for item in outputs:
            flat.extend(flatten_outputs(item))
        return tuple(flat)
    if outputs is None:
        return ()
    raise TypeError(f"model returned {type(outputs).__name__}, which holds no tensors")


def output_names(outputs: Any, path: str | None = None) -> list[str | None]:
    """The name of each tensor :func:`flatten_outputs` returns, in the same order.

    Tensors under a mapping (a dict, a transformers ``ModelOutput``) are named by their key
    path, e.g. ``logits`` or ``hidden_states.3``; tensors reached through sequences alone (a
    bare tensor, a tuple) have no name.
    """
    if isinstance(outputs, torch.Tensor):
        return [path]
    if isinstance(outputs, Mapping) or hasattr(outputs, "to_tuple"):
        items = [(str(key), value) for key, value in outputs.items() if value is not None]
        return [
            name
            for key, value in items
            for name in output_names(value, key if path is None else f"{path}.{key}")
        ]
    if isinstance(outputs, Sequence):
        return [
            name
            for index, item in enumerate(outputs)
            for name in output_names(item, None if path is None else f"{path}.{index}")
        ]
    return []


class PositionalAdapter(nn.Module):
    """Calls ``model(**{name: tensor})`` in input-spec order and returns a flat tensor tuple."""

    def __init__(self, model: nn.Module, input_names: Sequence[str], keyword: bool) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.keyword = keyword

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten_outputs(self._call(args))

    def named_outputs(self, *args: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], list[str | None]]:
        """:meth:`forward`'s outputs for ``args`` and their names, from one call."""
        outputs = self._call(args)
        return flatten_outputs(outputs), output_names(outputs)

    def _call(self, args: tuple[torch.Tensor, ...]) -> Any:
        if self.keyword:
            return self.model(**dict(zip(self.input_names, args, strict=True)))
        return self.model(*args)
