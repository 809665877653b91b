"""How the engines of one loaded model run: one interface, whatever runs them.

A :class:`~pipeline.runtime.base.ModelRuntime` loads a saved model into a :class:`LoadedArtifact`:
the callable module and its :class:`EngineExecutor`. The executor is the only thing that knows
what runs the engines (Torch-TensorRT's C++ runtime, our TensorRT-RTX runner, or nothing for an
exported program); everything above it (the loaded model, the verify stage that ships a runtime
cache, ``bundle warm``, the bench) asks it, through these methods, never the module:

- :meth:`EngineExecutor.configure`: put a runtime policy on every engine (all or nothing);
- :meth:`EngineExecutor.call_context`: what each call runs inside (a process-wide mode);
- :meth:`EngineExecutor.hold_memory`: keep per-call execution memory between calls;
- :meth:`EngineExecutor.outcome`: which runner, why, and the runtime cache's state as a
  :class:`CacheStatus` with its reason; :meth:`EngineExecutor.cache_bytes` its contents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any

from torch import nn

from pipeline.runtime.policy import PolicyReport, RuntimeConfig


class RunnerKind(str, Enum):
    """What runs a loaded model's engines."""

    none = "none (no engines)"
    cpp = "Torch-TensorRT C++ runtime (execute_engine)"
    rtx = "tensorrt_rtx runner (pipeline.runtime.rtx_runner)"


class CacheStatus(str, Enum):
    """Whether a TensorRT-RTX runtime cache (compiled kernels) served a load."""

    hit = "hit"
    miss = "miss"
    #: The cache is read when the first engine's execution context is created (lazy engines).
    pending = "pending"
    not_used = "not used"


@dataclass(frozen=True)
class CacheState:
    """A :class:`CacheStatus` and why (empty for a hit)."""

    status: CacheStatus
    reason: str = ""

    def describe(self) -> str:
        """``hit``, or ``miss: the bundle has no runtime cache``."""
        return f"{self.status.value}: {self.reason}" if self.reason else self.status.value


@dataclass(frozen=True)
class LoadOutcome:
    """What loading decided: which runner runs the engines and why, and the runtime cache."""

    runner: RunnerKind
    reason: str
    cache: CacheState

    def record(self) -> dict[str, str]:
        """As ``load_report["engines"]`` shows it."""
        return {"runner": self.runner.value, "reason": self.reason, "runtime_cache": self.cache.describe()}


class EngineExecutor(ABC):
    """The engines of one loaded module and how they run (see the module docstring)."""

    runner: RunnerKind

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        self._policy = RuntimeConfig()

    @property
    def policy(self) -> RuntimeConfig:
        """The policy last configured (the default before :meth:`configure`)."""
        return self._policy

    @abstractmethod
    def configure(self, policy: RuntimeConfig, previous: RuntimeConfig | None = None) -> PolicyReport:
        """Put ``policy`` on every engine: on all, or, if one refuses, on none (those already
        configured go back to ``previous``, the policy in force) before the error is raised."""

    def call_context(self) -> AbstractContextManager[Any]:
        """A reusable, thread-safe context manager entered around each call."""
        return nullcontext()

    def hold_memory(self) -> AbstractContextManager[Any]:
        """Keep engine execution memory allocated between calls while open (dynamic policy)."""
        return nullcontext()

    def cache_state(self) -> CacheState:
        """The runtime cache's state for this load."""
        return CacheState(CacheStatus.not_used, "no TensorRT-RTX runner")

    def cache_bytes(self) -> bytes | None:
        """The runtime cache's contents, to ship in a bundle (None: there is none)."""
        return None

    def engine_objects(self) -> dict[str, Any]:
        """The engine objects (or runners) by where they hang in the module, for inspection."""
        return {}

    def outcome(self) -> LoadOutcome:
        """Which runner, why, and the runtime cache's state, now."""
        return LoadOutcome(self.runner, self.reason, self.cache_state())


class NoEngines(EngineExecutor):
    """A module without TensorRT engines (an exported program): only the default policy applies."""

    runner = RunnerKind.none

    def configure(self, policy: RuntimeConfig, previous: RuntimeConfig | None = None) -> PolicyReport:
        self._policy = policy
        if policy.is_default():
            return PolicyReport(policy=policy, applied=True)
        return PolicyReport(
            policy=policy,
            applied=False,
            reason=f"runtime={policy.name} configures TensorRT engines; the export backend has none",
        )


@dataclass
class LoadedArtifact:
    """A deserialized model: the module to call and the executor of its engines."""

    module: nn.Module
    executor: EngineExecutor
