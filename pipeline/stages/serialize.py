"""serialize: write the compiled model into the bundle's staging directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.backends.base import Backend, CompiledModel
from pipeline.config.schema import InputSpec
from pipeline.runtime.base import DirectoryFiles, SavedArtifact


@dataclass
class SerializedModel:
    """What was written under the staging root (the model file, and any engine files)."""

    root: Path
    artifact: SavedArtifact

    @property
    def files(self) -> DirectoryFiles:
        """Reads the written files back (the reload stage)."""
        return DirectoryFiles(self.root)


def serialize_model(
    backend: Backend, compiled: CompiledModel, staging: Path, specs: list[InputSpec]
) -> SerializedModel:
    """Save ``compiled`` under ``staging`` (``model/...``, and ``engines/...`` for TensorRT)."""
    return SerializedModel(root=staging, artifact=backend.save(compiled, staging, specs))
