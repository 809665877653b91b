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

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.runtime.policy import RuntimeConfig

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


def apply_to_engines(
    engines: list[EngineRef], policy: RuntimeConfig, previous: RuntimeConfig | None = None
) -> dict[str, Any]:
    """Configure every engine for ``policy`` and read back what can be read: engine path ->
    settings. All or nothing: if one engine refuses, the engines already configured are put back
    to ``previous`` (the policy in force; None while loading, when a failure discards the model)
    before the error propagates."""
    readback: dict[str, Any] = {}
    configured: list[EngineRef] = []
    try:
        for ref in engines:
            configured.append(ref)
            configure_engine(ref.engine, policy)
            readback[ref.path] = {"pre_allocated_outputs": bool(ref.engine.use_pre_allocated_outputs)}
            if readback[ref.path]["pre_allocated_outputs"] != policy.pre_allocated_outputs:
                raise RuntimeError(f"engine {ref.path} did not take use_pre_allocated_outputs")
    except BaseException:
        if previous is not None:
            for ref in configured:
                configure_engine(ref.engine, previous)
        raise
    return readback


@contextmanager
def resources_held(engines: list[EngineRef], policy: RuntimeConfig) -> Iterator[None]:
    """Keep engine memory allocated between calls inside the block (the seed's
    ``ResourceAllocationStrategy(..., dynamically_allocate_resources=False)``), then restore.

    Only the engines that were switched are switched back, also when switching fails part way.
    """
    switched: list[EngineRef] = []
    try:
        for ref in engines:
            ref.engine.use_dynamically_allocated_resources(False)
            switched.append(ref)
        yield
    finally:
        for ref in switched:
            ref.engine.use_dynamically_allocated_resources(policy.dynamic_allocation)


class ModeGate:
    """Shares a process-wide mode switch (Torch-TensorRT's CUDA-graph mode) between threads.

    A call that needs the mode on (CUDA-graph policy) needs it on for its whole duration, and a
    call under any other policy needs it off; a CUDA graph being recorded must not see other
    engine work start. So calls with the mode on run one at a time, alone; calls with it off run
    together, never beside one with it on. Neither side starves: a waiting mode-on call goes
    before newly arriving mode-off calls, and after each mode-on call the mode-off calls already
    waiting go before the next mode-on call. The mode is off whenever no mode-on call runs.

    A call made from inside another on the same thread (a model calling a model) passes straight
    through when it needs the same mode, and raises when it needs the other one, instead of
    waiting for itself forever. A failing switch or an interrupted wait leaves the gate usable.
    """

    def __init__(self, get: Callable[[], bool], set_: Callable[[bool], None]) -> None:
        self._get, self._set = get, set_
        self._condition = threading.Condition()
        self._sharing = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self._sharing_waiting = 0
        self._sharing_turn = False  # set when a mode-on call leaves while mode-off calls wait
        self._held = threading.local()  # this thread's (mode, depth) while inside the gate

    def enter(self, on: bool) -> None:
        """Wait until a call of this kind may run, and set the mode for it."""
        held: tuple[bool, int] | None = getattr(self._held, "state", None)
        if held is not None:
            mode, depth = held
            if mode != on:
                raise RuntimeError(
                    f"a loaded model with CUDA graphs {'on' if on else 'off'} was called from inside "
                    f"the call of one with them {'on' if mode else 'off'}; call them one after the other"
                )
            self._held.state = (mode, depth + 1)
            return
        with self._condition:
            if on:
                self._enter_exclusive()
            else:
                self._enter_shared()
        self._held.state = (on, 1)

    def _enter_exclusive(self) -> None:
        self._exclusive_waiting += 1
        try:
            self._condition.wait_for(
                lambda: not self._exclusive and not self._sharing and not self._sharing_turn
            )
        finally:
            self._exclusive_waiting -= 1
        self._exclusive = True
        try:
            self._set(True)
        except BaseException:
            self._exclusive = False
            self._condition.notify_all()
            raise

    def _enter_shared(self) -> None:
        self._sharing_waiting += 1
        try:
            self._condition.wait_for(
                lambda: not self._exclusive and (self._sharing_turn or not self._exclusive_waiting)
            )
        finally:
            self._sharing_waiting -= 1
            if self._sharing_turn and not self._sharing_waiting:
                self._sharing_turn = False
                self._condition.notify_all()
        if not self._sharing and self._get():
            self._set(False)  # switched on by code outside any loaded model
        self._sharing += 1

    def exit(self, on: bool) -> None:
        """Leave; a mode-on call switches the mode back off."""
        mode, depth = self._held.state
        if depth > 1:
            self._held.state = (mode, depth - 1)
            return
        self._held.state = None
        with self._condition:
            try:
                if on:
                    self._set(False)
            finally:
                if on:
                    self._exclusive = False
                    self._sharing_turn = self._sharing_waiting > 0
                else:
                    self._sharing -= 1
                self._condition.notify_all()

    def call(self, on: bool) -> GatedCall:
        """A reusable context manager for calls of one kind."""
        return GatedCall(self, on)


class GatedCall(AbstractContextManager[None]):
    """Reusable, thread-safe context manager: one call through a :class:`ModeGate`."""

    def __init__(self, gate: ModeGate, on: bool) -> None:
        self._gate, self._on = gate, on

    def __enter__(self) -> None:
        self._gate.enter(self._on)

    def __exit__(self, *exc: object) -> None:
        self._gate.exit(self._on)
