"""compile: hand the eager model to the chosen backend (once per distinct engine in a process)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.backends.base import Backend, CompiledModel
from pipeline.config.schema import PipelineConfig
from pipeline.stages.build import BuiltModel

# What decides the compiled engines: not the runtime policy (its compile flags are in `compile`),
# verification, benchmarking or where artifacts go.
ENGINE_IDENTITY = ("model", "precision", "backend", "compile")


def compile_model(backend: Backend, built: BuiltModel, config: PipelineConfig) -> CompiledModel:
    """Compile ``built.eager``, traced at ``built.trace_inputs``, for the declared shape ranges."""
    with torch.no_grad():
        return backend.compile(built.eager, built.trace_inputs, config)


@dataclass
class CachedCompile:
    """A compiled model kept for reuse, and what compiling it cost."""

    compiled: CompiledModel
    seconds: float


class CompileCache:
    """The last compiled model of this process, by what decides its engines.

    A sweep over runtime policies in one process (Hydra's basic launcher, the GPU suite) builds
    bundles whose engines are identical but for the policy loaded onto them: they are compiled
    once. Engines live on the device, so only the last one is kept.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._entry: CachedCompile | None = None

    @staticmethod
    def key(resolved: dict[str, Any], weights_sha256: str) -> str:
        """The identity of the engines a resolved config (plain data) compiles to."""
        identity = {name: resolved.get(name) for name in ENGINE_IDENTITY}
        payload = json.dumps({"config": identity, "weights": weights_sha256}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> CachedCompile | None:
        """The cached compile for ``key``, if it is the one kept."""
        return self._entry if key == self._key else None

    def put(self, key: str, compiled: CompiledModel, seconds: float) -> None:
        """Keep ``compiled`` in place of whatever was kept."""
        self._key, self._entry = key, CachedCompile(compiled, seconds)

    def clear(self) -> None:
        """Forget the compiled model (frees its engines)."""
        self._key = self._entry = None


#: The process's compile cache, used by :func:`pipeline.runner.run_pipeline`.
COMPILE_CACHE = CompileCache()
