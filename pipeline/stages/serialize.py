"""serialize: write the compiled model into the bundle's staging directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.backends.base import Backend, CompiledModel
from pipeline.bundle.format import MODEL_DIR
from pipeline.config.schema import InputSpec


@dataclass
class SerializedModel:
    """Where the serialized model lies, relative to the staging root, and its size."""

    root: Path
    relative_path: str
    size_bytes: int

    @property
    def path(self) -> Path:
        """Absolute path of the model file."""
        return self.root / self.relative_path


def serialize_model(
    backend: Backend, compiled: CompiledModel, staging: Path, specs: list[InputSpec]
) -> SerializedModel:
    """Save ``compiled`` as ``staging/model/<artifact>``."""
    relative = f"{MODEL_DIR}/{backend.artifact_name}"
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    backend.save(compiled, target, specs)
    return SerializedModel(root=staging, relative_path=relative, size_bytes=target.stat().st_size)
