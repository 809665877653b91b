"""Declarative compile-and-deploy pipeline for Torch-TensorRT.

Deployment code needs one call: ``pipeline.load_bundle(path)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pipeline.bundle.loader import LoadedBundle, load_bundle

__all__ = ["LoadedBundle", "__version__", "load_bundle"]


def __getattr__(name: str) -> Any:
    # Deployment hosts import `pipeline` for load_bundle alone: keep Hydra and the stages unloaded.
    if name in ("load_bundle", "LoadedBundle"):
        from pipeline.bundle import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
