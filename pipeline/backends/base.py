"""The small interface every compiler backend implements (the build side of a runtime)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config.schema import InputSpec, PipelineConfig
from pipeline.errors import NotRefittableError
from pipeline.runtime.base import FileSource, ModelRuntime, SavedArtifact


@dataclass
class CompiledModel:
    """A freshly compiled model: what to call, and what :meth:`Backend.save` serializes."""

    module: nn.Module
    artifact: Any
    engine_count: int = 0
    example_inputs: tuple[torch.Tensor, ...] = ()


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
