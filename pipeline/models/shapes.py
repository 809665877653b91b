"""Dynamic dimensions: which dimensions of the inputs vary, under which name, over which range.

A dimension named in an input's ``dims`` is shared by every input that names it (BERT's
``batch`` and ``seq`` across ``input_ids`` and ``token_type_ids``). A dimension that differs
between ``min_shape`` and ``max_shape`` without a name is its own dimension, named
``<input>_dim<index>``. From these come ``torch.export`` dims (one per name), the shapes of the
golden input sets across the range, and the shape the model is traced at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.runtime.types import InputSpec, dim_names

#: Golden input sets besides the opt-shape one, in the order they are checked.
SHAPE_SET_NAMES = ("min", "max", "odd")


@dataclass(frozen=True)
class DynamicDim:
    """One dynamic dimension and its range."""

    name: str
    min: int
    opt: int
    max: int

    def odd_size(self) -> int | None:
        """A size strictly inside the range that is none of min, opt and max (odd if it can be)."""
        middle = (self.min + self.max) // 2
        for size in (middle | 1, middle, middle + 1, middle - 1):
            if self.min < size < self.max and size != self.opt:
                return size
        return None


def dynamic_dims(specs: Sequence[InputSpec]) -> dict[str, DynamicDim]:
    """Every dynamic dimension of ``specs`` by name, in order of first use."""
    found: dict[str, DynamicDim] = {}
    for spec in specs:
        low = spec.min_shape or spec.shape
        high = spec.max_shape or spec.shape
        for index, name in enumerate(dim_names(spec)):
            if name is not None and name not in found:
                found[name] = DynamicDim(name, low[index], spec.shape[index], high[index])
    return found


def shape_at(spec: InputSpec, sizes: Mapping[str, int]) -> list[int]:
    """The shape of ``spec`` with its named dimensions at ``sizes`` (opt where not given)."""
    return [
        sizes.get(name, opt) if name is not None else opt
        for name, opt in zip(dim_names(spec), spec.shape, strict=True)
    ]


def shape_sets(specs: Sequence[InputSpec]) -> dict[str, dict[str, int]]:
    """Sizes of every dynamic dimension for the golden sets other than opt (min, max, odd).

    Empty for a model without dynamic dimensions. ``odd`` is left out when no dimension has a
    size strictly between its bounds that differs from opt.
    """
    dims = dynamic_dims(specs)
    if not dims:
        return {}
    sets = {
        "min": {name: dim.min for name, dim in dims.items()},
        "max": {name: dim.max for name, dim in dims.items()},
    }
    odd = {name: size for name, dim in dims.items() if (size := dim.odd_size()) is not None}
    if odd:
        sets["odd"] = odd
    return sets


def trace_sizes(specs: Sequence[InputSpec]) -> dict[str, int]:
    """Sizes to trace the model at: opt, except that a dynamic dimension is never 1.

    ``torch.export`` specializes a dimension it sees at size 0 or 1 and then refuses to keep it
    dynamic, so a dynamic batch with opt 1 is traced at 2 (engines still tune for opt).
    """
    return {name: max(dim.opt, min(2, dim.max)) for name, dim in dynamic_dims(specs).items()}
