"""What runs a saved model on a deployment host: the interface each kind of bundle implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from pipeline.runtime.engine_graph import EngineRecord
from pipeline.runtime.executor import EngineExecutor, LoadedArtifact
from pipeline.runtime.policy import RuntimeConfig
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
    #: TensorRT-RTX: the runtime cache file shipped beside the engines, and the host key
    #: (SM, TensorRT-RTX and CUDA versions) it was made under; None / empty when there is none.
    runtime_cache: str | None = None
    runtime_cache_key: dict[str, str] = field(default_factory=dict)
    #: The engines' execution contexts are created on the first call (``compile.lazy_engine_init``).
    lazy_init: bool = False

    @property
    def files(self) -> list[str]:
        """Every file of the saved model, relative to the bundle root."""
        cache = [self.runtime_cache] if self.runtime_cache else []
        return [self.model_file, *(record.file for record in self.engines), *cache]


class ModelRuntime(ABC):
    """Loads a saved model and runs it under a runtime policy: all a deployment host needs.

    Implementations import no compiler, so that loading a bundle stays fast. How the loaded
    model's engines run, and what loading decided, is its :class:`EngineExecutor`'s business.
    """

    kind: BackendKind

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Load what running artifacts needs in this process (e.g. a runtime library)."""

    @abstractmethod
    def environment(self, device: torch.device | None = None) -> dict[str, str]:
        """Versions that decide whether an artifact made here loads elsewhere (on ``device``,
        where the host has several)."""

    @abstractmethod
    def load(
        self,
        artifact: SavedArtifact,
        files: FileSource,
        device: torch.device,
        policy: RuntimeConfig | None = None,
    ) -> LoadedArtifact:
        """Deserialize a saved model onto ``device``; callers have verified the files.
        ``policy`` (the one about to be applied) may decide how engines are run."""

    @abstractmethod
    def executor(self, module: nn.Module) -> EngineExecutor:
        """The executor of a module compiled in this process (not loaded from a bundle)."""
