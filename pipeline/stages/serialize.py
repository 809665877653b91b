"""serialize: write the compiled model into the bundle's staging directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.backends.base import Backend, CompiledModel
from pipeline.config.schema import InputSpec
from pipeline.runtime.base import DirectoryFiles, SavedArtifact
from pipeline.runtime.format import RUNTIME_CACHE_NAME


@dataclass(frozen=True)
class RuntimeCache:
    """A TensorRT-RTX runtime cache (compiled kernels) and the host key it is filed under."""

    data: bytes
    key: dict[str, str]

    def manifest_entry(self) -> dict[str, object]:
        """The manifest's ``runtime_cache`` field for it."""
        return {"file": RUNTIME_CACHE_NAME, "key": dict(self.key)}


@dataclass(frozen=True)
class SerializedFiles:
    """The files under a staging root, and files not (yet) written there, by relative path."""

    root: Path
    pending: dict[str, bytes] = field(default_factory=dict)

    def read(self, relative: str) -> bytes:
        """The bytes of ``relative``."""
        if relative in self.pending:
            return self.pending[relative]
        return DirectoryFiles(self.root).read(relative)


@dataclass(frozen=True)
class SerializedModel:
    """What was written under the staging root (the model file, and any engine files)."""

    root: Path
    artifact: SavedArtifact
    #: Files the model loads that a later step writes (the runtime cache: the package step).
    pending: dict[str, bytes] = field(default_factory=dict)

    @property
    def files(self) -> SerializedFiles:
        """Reads the written files back (the reload stage), pending ones from memory."""
        return SerializedFiles(self.root, self.pending)

    def with_runtime_cache(self, cache: RuntimeCache | None) -> SerializedModel:
        """The same model loaded with ``cache`` as its runtime cache (the bundle will ship it)."""
        if cache is None:
            return self
        artifact = dataclasses.replace(
            self.artifact, runtime_cache=RUNTIME_CACHE_NAME, runtime_cache_key=dict(cache.key)
        )
        return SerializedModel(self.root, artifact, {**self.pending, RUNTIME_CACHE_NAME: cache.data})


def serialize_model(
    backend: Backend, compiled: CompiledModel, staging: Path, specs: list[InputSpec]
) -> SerializedModel:
    """Save ``compiled`` under ``staging`` (``model/...``, and ``engines/...`` for TensorRT)."""
    return SerializedModel(root=staging, artifact=backend.save(compiled, staging, specs))
