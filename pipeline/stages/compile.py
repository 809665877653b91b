"""compile: hand the eager model to the chosen backend (once per distinct engine in a process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.backends.base import Backend, CompiledModel
from pipeline.config.schema import PipelineConfig
from pipeline.console import stderr_to_log
from pipeline.identity import engine_key
from pipeline.stages.build import BuiltModel


def compile_model(backend: Backend, built: BuiltModel, config: PipelineConfig) -> CompiledModel:
    """Compile ``built.eager``, traced at ``built.trace_inputs``, for the declared shape ranges
    (what the compiler prints to stderr goes to torch's log: the run's ``torch.log``)."""
    with torch.no_grad(), stderr_to_log("torch.export"):
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
    once. Engines live on the device, so only the last one is kept, and only while someone
    holds the cache (:meth:`kept`, :meth:`hold`): every run frees it on return otherwise.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._entry: CachedCompile | None = None
        self._holders = 0

    def hold(self) -> None:
        """Keep the cached compile between runs until :meth:`release` (a sweep in one process)."""
        self._holders += 1

    def release(self) -> None:
        """Undo one :meth:`hold`; the last one frees the cached engines."""
        self._holders = max(0, self._holders - 1)
        self.release_unless_kept()

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Keep the cached compile between runs inside the block (freed at its end)."""
        self.hold()
        try:
            yield
        finally:
            self.release()

    def release_unless_kept(self) -> None:
        """Free the cached engines unless someone holds the cache (the end of every run)."""
        if self._holders == 0:
            self.clear()

    @staticmethod
    def key(resolved: dict[str, Any], weights_sha256: str) -> str:
        """The identity of the engines a resolved config (plain data) compiles to: the config
        sections marked ``Identity.engine`` (the runtime policy's compile flags are in ``compile``)."""
        return engine_key(resolved, weights_sha256)

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
