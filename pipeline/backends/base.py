"""The small interface every compiler backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.backends.engine_graph import EngineRecord
from pipeline.config.schema import BackendKind, InputSpec, PipelineConfig, RuntimeConfig
from pipeline.errors import NotRefittableError


class FileSource(Protocol):
    """Reads the files of a saved model by their path relative to the bundle root."""

    def read(self, relative: str) -> bytes:
        """The bytes of one file."""
        ...


@dataclass
class DirectoryFiles:
    """Files read straight from a directory (a staging directory the pipeline wrote itself)."""

    root: Path

    def read(self, relative: str) -> bytes:
        """The bytes of ``root/relative``."""
        return (self.root / relative).read_bytes()


@dataclass
class SavedArtifact:
    """What :meth:`Backend.save` wrote: the model file and, for TensorRT, one file per engine."""

    model_file: str
    engines: list[EngineRecord] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        """Every file of the saved model, relative to the bundle root."""
        return [self.model_file, *(record.file for record in self.engines)]


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

    artifact: SavedArtifact
    files: FileSource
    #: The eager model (same architecture, new weights), on ``device``, in its precision.
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    specs: list[InputSpec]
    #: The directory the refitted model is written into (same relative paths as ``artifact``).
    target: Path
    device: torch.device


@dataclass
class RefitReport:
    """What a refit did: engines refitted, what it wrote, and the seconds each step took."""

    engines: int
    artifact: SavedArtifact
    seconds: dict[str, float] = field(default_factory=dict)


class ModelRuntime(ABC):
    """Loads a saved model and runs it under a runtime policy: all a deployment host needs.

    Implementations import no compiler, so that loading a bundle stays fast.
    """

    kind: BackendKind

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Load what running artifacts needs in this process (e.g. a runtime library)."""

    @abstractmethod
    def environment(self) -> dict[str, str]:
        """Versions that decide whether an artifact made here loads elsewhere."""

    @abstractmethod
    def load(self, artifact: SavedArtifact, files: FileSource, device: torch.device) -> nn.Module:
        """Deserialize a model saved by :meth:`Backend.save`; callers have verified the files."""

    @abstractmethod
    def apply_policy(self, module: nn.Module, policy: RuntimeConfig) -> PolicyReport:
        """Configure every engine of a loaded ``module`` for ``policy``."""

    def call_context(self, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        """A reusable, thread-safe context manager entered around each call (scopes
        process-wide modes)."""
        return nullcontext()

    def hold_resources(self, module: nn.Module, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        """Keep engine resources allocated while the context is open (no-op where none exist)."""
        return nullcontext()


class Backend(ModelRuntime):
    """Compiles an eager model and serializes it; loads and runs it as its runtime does."""

    def check_config(self, config: PipelineConfig) -> None:
        """Raise ConfigError for settings this backend (as installed) cannot honour."""

    @abstractmethod
    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: PipelineConfig
    ) -> CompiledModel:
        """Compile ``model`` (already on its device and in its precision)."""

    @abstractmethod
    def save(self, compiled: CompiledModel, root: Path, specs: list[InputSpec]) -> SavedArtifact:
        """Serialize ``compiled`` into the directory ``root`` (a bundle being assembled)."""

    def refit(self, request: RefitRequest) -> RefitReport:
        """Write ``request.artifact`` into ``request.target`` with every engine refitted to the
        weights of ``request.model``. Backends without engines cannot refit."""
        raise NotRefittableError(f"the {self.kind.value} backend has no engines to refit")
