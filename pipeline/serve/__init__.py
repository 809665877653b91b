"""Serving bundles: a Triton model repository, a real Triton server, Ray Serve, and a client.

Imports :mod:`pipeline.runtime` and nothing else of the build side (no Hydra, omegaconf, stages
or config loading), like deployment code:

    python -m pipeline.serve export-triton BUNDLE REPO_DIR     # a Triton model repository
    python -m pipeline.serve BUNDLE --port 8000                # tritonserver, KServe v2 over HTTP
    python -m pipeline.serve BUNDLE --ray --replicas 2         # the same routes on Ray Serve
    python -m pipeline.serve check URL BUNDLE                  # golden sets through the server
"""

from __future__ import annotations

from pipeline.serve.client import RequestError, ServeClient, ServerCheck, check_server
from pipeline.serve.repository import ExportedModel, export_triton
from pipeline.serve.triton_config import TritonModelConfig, triton_config

__all__ = [
    "ExportedModel",
    "RequestError",
    "ServeClient",
    "ServerCheck",
    "TritonModelConfig",
    "check_server",
    "export_triton",
    "triton_config",
]
