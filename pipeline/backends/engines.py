"""Runtime policies applied at the level of TensorRT engine objects.

After ``torch_tensorrt.save`` and a reload, a module holds no ``TorchTensorRTModule``: its
engines are ``torch.classes.tensorrt.Engine`` script objects hanging off plain holder modules
(``_run_on_acc_N.engine``) or the root (``_run_on_acc_N_engine``), run through
``torch.ops.tensorrt.execute_engine``. Torch-TensorRT's own helpers look for
``TorchTensorRTModule`` children and so silently do nothing there. This module finds engines by
type, wherever they hang, and configures them directly. It imports nothing from torch_tensorrt,
so its logic is testable without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.config.schema import RuntimeConfig

ENGINE_QUALIFIED_NAME = "__torch__.torch.classes.tensorrt.Engine"


def is_engine(value: object) -> bool:
    """True for a ``torch.classes.tensorrt.Engine`` script object."""
    if not isinstance(value, torch.ScriptObject):
        return False
    try:
        return bool(value._type().qualified_name() == ENGINE_QUALIFIED_NAME)
    except RuntimeError:
        return False


@dataclass(frozen=True)
class EngineRef:
    """An engine and where it hangs (``module.path.attribute``)."""

    path: str
    engine: Any


def find_engines(module: nn.Module, predicate: Callable[[object], bool] = is_engine) -> list[EngineRef]:
    """Every engine object reachable from ``module``'s submodules, each listed once, by path."""
    found: list[EngineRef] = []
    seen: set[int] = set()
    for prefix, submodule in module.named_modules(remove_duplicate=False):
        for name, value in vars(submodule).items():
            if predicate(value) and id(value) not in seen:
                seen.add(id(value))
                found.append(EngineRef(f"{prefix}.{name}" if prefix else name, value))
    return found


def configure_engine(engine: Any, policy: RuntimeConfig) -> None:
    """Set the per-engine parts of ``policy`` on one engine object."""
    engine.use_pre_allocated_outputs = policy.pre_allocated_outputs
    # A positional bool: the keyword form raises on the TorchScript class.
    engine.use_dynamically_allocated_resources(policy.dynamic_allocation)


def apply_to_engines(engines: list[EngineRef], policy: RuntimeConfig) -> dict[str, Any]:
    """Configure every engine and read back what can be read: engine path -> settings."""
    readback: dict[str, Any] = {}
    for ref in engines:
        configure_engine(ref.engine, policy)
        readback[ref.path] = {"pre_allocated_outputs": bool(ref.engine.use_pre_allocated_outputs)}
        if readback[ref.path]["pre_allocated_outputs"] != policy.pre_allocated_outputs:
            raise RuntimeError(f"engine {ref.path} did not take use_pre_allocated_outputs")
    return readback


@contextmanager
def resources_held(engines: list[EngineRef], policy: RuntimeConfig) -> Iterator[None]:
    """Keep engine memory allocated between calls inside the block (the seed's
    ``ResourceAllocationStrategy(..., dynamically_allocate_resources=False)``), then restore."""
    for ref in engines:
        ref.engine.use_dynamically_allocated_resources(False)
    try:
        yield
    finally:
        for ref in engines:
            ref.engine.use_dynamically_allocated_resources(policy.dynamic_allocation)


class ScopedMode:
    """Reusable context manager that turns a process-wide mode on around a call, then back.

    Torch-TensorRT's CUDA-graph mode is process-wide; scoping it to this model's calls keeps
    other models in the process on their own policies.
    """

    def __init__(self, get: Callable[[], bool], set_: Callable[[bool], None]) -> None:
        self._get, self._set = get, set_
        self._previous: list[bool] = []

    def __enter__(self) -> None:
        previous = self._get()
        self._previous.append(previous)
        if not previous:
            self._set(True)

    def __exit__(self, *exc: object) -> None:
        if not self._previous.pop():
            self._set(False)
