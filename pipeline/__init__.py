"""Declarative compile-and-deploy pipeline for Torch-TensorRT.

Deployment code needs one call: ``pipeline.runtime.load_bundle(path)`` (also ``pipeline.load_bundle``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pipeline.runtime import LoadedBundle, load_bundle

__all__ = ["LoadedBundle", "__version__", "load_bundle"]


def __getattr__(name: str) -> Any:
    # Deployment hosts import `pipeline` for load_bundle alone: keep Hydra and the stages unloaded.
    if name in ("load_bundle", "LoadedBundle"):
        from pipeline import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
