"""What runs a saved model on a deployment host: the interface each kind of bundle implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pipeline.runtime.engine_graph import EngineRecord
from pipeline.runtime.policy import PolicyReport, RuntimeConfig
from pipeline.runtime.types import BackendKind


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
    """What a backend saved: the model file and, for TensorRT, one file per engine."""

    model_file: str
    engines: list[EngineRecord] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        """Every file of the saved model, relative to the bundle root."""
        return [self.model_file, *(record.file for record in self.engines)]


class ModelRuntime(ABC):
    """Loads a saved model and runs it under a runtime policy: all a deployment host needs.

    Implementations import no compiler, so that loading a bundle stays fast.
    """

    kind: BackendKind

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Load what running artifacts needs in this process (e.g. a runtime library)."""

    @abstractmethod
    def environment(self, device: torch.device | None = None) -> dict[str, str]:
        """Versions that decide whether an artifact made here loads elsewhere (on ``device``,
        where the host has several)."""

    @abstractmethod
    def load(self, artifact: SavedArtifact, files: FileSource, device: torch.device) -> nn.Module:
        """Deserialize a saved model onto ``device``; callers have verified the files."""

    @abstractmethod
    def apply_policy(
        self, module: nn.Module, policy: RuntimeConfig, previous: RuntimeConfig | None = None
    ) -> PolicyReport:
        """Configure every engine of a loaded ``module`` for ``policy``: on every engine or, if
        one refuses, on none (they are put back to ``previous``, the policy in force) before
        raising."""

    def call_context(self, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        """A reusable, thread-safe context manager entered around each call (scopes
        process-wide modes)."""
        return nullcontext()

    def hold_resources(self, module: nn.Module, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        """Keep engine resources allocated while the context is open (no-op where none exist)."""
        return nullcontext()
