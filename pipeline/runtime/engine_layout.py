"""Torch-TensorRT's serialized-engine layout, in one place.

An engine's serialized form (``torch.classes.tensorrt.Engine.__getstate__``, the list its
constructor takes) is a list of fields whose positions the C++ runtime defines
(``core/runtime/runtime.h``); binding names are joined by a delimiter. A bundle records each
engine's fields, so the positions this project reads must be the installed runtime's: the runtime
library exports them as ``torch.ops.tensorrt.<NAME>()``, and :func:`check_engine_layout` compares
them (and each engine's field count) before any engine of a bundle is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from pipeline.errors import BundleError


@dataclass(frozen=True)
class EngineLayout:
    """Where the fields this project reads sit in an engine's serialized form."""

    engine: int
    input_binding_names: int
    output_binding_names: int
    requires_output_allocator: int
    binding_delimiter: str


#: The layout of ABI 8 (Torch-TensorRT 2.11's runtime).
LAYOUT = EngineLayout(
    engine=3,
    input_binding_names=4,
    output_binding_names=5,
    requires_output_allocator=9,
    binding_delimiter="%",
)
#: The runtime library's name for each field's position (``torch.ops.tensorrt.<name>()``).
RUNTIME_NAMES = {
    "engine": "ENGINE_IDX",
    "input_binding_names": "INPUT_BINDING_NAMES_IDX",
    "output_binding_names": "OUTPUT_BINDING_NAMES_IDX",
    "requires_output_allocator": "REQUIRES_OUTPUT_ALLOCATOR_IDX",
    "binding_delimiter": "SERIALIZED_ENGINE_BINDING_DELIM",
}
FIELD_COUNT_NAME = "SERIALIZATION_LEN"


def runtime_constant(name: str) -> Any:
    """A constant the loaded runtime library exports (None where it exports none by that name)."""
    operators = torch.ops.tensorrt
    return getattr(operators, name)() if hasattr(operators, name) else None


def layout_mismatches() -> list[str]:
    """Each position of :data:`LAYOUT` that the loaded runtime library puts elsewhere."""
    problems = []
    for field in fields(LAYOUT):
        exported = runtime_constant(RUNTIME_NAMES[field.name])
        ours = getattr(LAYOUT, field.name)
        if exported is not None and exported != ours:
            problems.append(f"{field.name} at {exported!r} (this pipeline reads {ours!r})")
    return problems


def check_engine_layout(records: Sequence[Any]) -> None:
    """Refuse, before any engine is rebuilt, engines whose recorded form this runtime lays out
    otherwise (``records``: the bundle's :class:`~pipeline.runtime.engine_graph.EngineRecord`)."""
    if not records:
        return
    if problems := layout_mismatches():
        raise BundleError(
            "the installed Torch-TensorRT runtime lays out serialized engines differently: "
            + "; ".join(problems)
            + "; this pipeline does not support it yet"
        )
    length = runtime_constant(FIELD_COUNT_NAME)
    for record in records:
        if (
            length is not None and len(record.serialized_info) != length
        ) or record.engine_index != LAYOUT.engine:
            raise BundleError(
                f"engine {record.attribute}: recorded with {len(record.serialized_info)} fields (engine at "
                f"{record.engine_index}), this Torch-TensorRT runtime expects {length} (engine at "
                f"{LAYOUT.engine}); rebuild the bundle here"
            )


def binding_names(serialized_info: Sequence[str], position: int) -> list[str]:
    """The binding names recorded at ``position`` of an engine's serialized fields, in call order."""
    packed = serialized_info[position] if position < len(serialized_info) else ""
    return [name for name in packed.split(LAYOUT.binding_delimiter) if name]


def requires_output_allocator(serialized_info: Sequence[str]) -> bool:
    """Whether Torch-TensorRT recorded that an engine's output shapes depend on its input values
    (such engines need an output allocator, which only the C++ runtime provides here)."""
    if len(serialized_info) <= LAYOUT.requires_output_allocator:
        return False
    return serialized_info[LAYOUT.requires_output_allocator].strip().lower() in ("1", "true")
