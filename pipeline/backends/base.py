"""The small interface every compiler backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config.schema import BackendKind, InputSpec, PipelineConfig, RuntimeConfig
from pipeline.errors import NotRefittableError


@dataclass
class CompiledModel:
    """A freshly compiled model: what to call, and what :meth:`Backend.save` serializes."""

    module: nn.Module
    artifact: Any
    engine_count: int = 0
    example_inputs: tuple[torch.Tensor, ...] = ()


@dataclass
class PolicyReport:
    """What applying a runtime policy did: applied or not (and why), on how many engines."""

    policy: RuntimeConfig
    applied: bool
    engines_configured: int = 0
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def manifest_record(self) -> dict[str, Any]:
        """The ``runtime`` section of a bundle manifest: what loaders put back on."""
        return {
            "policy": asdict(self.policy),
            "applied": self.applied,
            "reason": self.reason,
            "engines_configured": self.engines_configured,
        }


@dataclass
class RefitRequest:
    """A refit's inputs: the saved model, and the eager model holding the new weights."""

    artifact: Path
    #: The eager model (same architecture, new weights), on ``device``, in its precision.
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    specs: list[InputSpec]
    target: Path
    device: torch.device


@dataclass
class RefitReport:
    """What a refit did: engines refitted, and the seconds each of its steps took."""

    engines: int
    seconds: dict[str, float] = field(default_factory=dict)


class Backend(ABC):
    """Compiles an eager model, serializes it, loads it back and applies runtime policies."""

    kind: BackendKind
    #: File name of the serialized model inside a bundle's ``model/`` directory.
    artifact_name: str

    def check_config(self, config: PipelineConfig) -> None:  # noqa: B027 - optional hook
        """Raise ConfigError for settings this backend (as installed) cannot honour."""

    @abstractmethod
    def environment(self) -> dict[str, str]:
        """Versions that decide whether an artifact made here loads elsewhere."""

    @abstractmethod
    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: PipelineConfig
    ) -> CompiledModel:
        """Compile ``model`` (already on its device and in its precision)."""

    @abstractmethod
    def save(self, compiled: CompiledModel, path: Path, specs: list[InputSpec]) -> None:
        """Serialize ``compiled`` to the file ``path``."""

    @abstractmethod
    def load(self, path: Path, device: torch.device) -> nn.Module:
        """Deserialize a model saved by :meth:`save`; callers have verified the file first."""

    @abstractmethod
    def apply_policy(self, module: nn.Module, policy: RuntimeConfig) -> PolicyReport:
        """Configure every engine of a loaded ``module`` for ``policy``."""

    def refit(self, request: RefitRequest) -> RefitReport:
        """Write ``request.artifact`` to ``request.target`` with every engine refitted to the
        weights of ``request.model``. Backends without engines cannot refit."""
        raise NotRefittableError(f"the {self.kind.value} backend has no engines to refit")

    def call_context(self, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        """A reusable context manager entered around each call (scopes process-wide modes)."""
        return nullcontext()

    def hold_resources(self, module: nn.Module, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        """Keep engine resources allocated while the context is open (no-op where none exist)."""
        return nullcontext()
