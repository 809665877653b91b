"""Serving bundles: a Triton model repository, a real Triton server, Ray Serve, and a client.

Imports :mod:`pipeline.runtime` and nothing else of the build side (no Hydra, omegaconf, stages
or config loading), like deployment code:

    python -m pipeline.serve export-triton BUNDLE REPO_DIR     # a Triton model repository
    python -m pipeline.serve BUNDLE --port 8000                # tritonserver, KServe v2 over HTTP
    python -m pipeline.serve BUNDLE --ray --replicas 2         # the same routes on Ray Serve
    python -m pipeline.serve check URL BUNDLE                  # golden sets through the server
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use: the serving libraries (tritonclient, protobuf) come with the serve extra,
# and `python -m pipeline.serve` must say so in one line where they are missing.
_EXPORTS = {
    "ExportedModel": "repository",
    "RequestError": "client",
    "ServeClient": "client",
    "ServerCheck": "client",
    "TritonModelConfig": "triton_config",
    "check_server": "client",
    "export_triton": "repository",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.serve' has no attribute {name!r}")
    return getattr(import_module(f"pipeline.serve.{_EXPORTS[name]}"), name)
