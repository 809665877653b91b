"""Bundles: the format, the store, loading, and the ``python -m pipeline.bundle`` tool."""

from pipeline.bundle.format import FORMAT_VERSION, Manifest

__all__ = ["FORMAT_VERSION", "Manifest"]
