"""Fixtures of the serving suites: the tiny_bert_dynamic bundle (shared dims), Triton's install."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.stages.package import PublishedBundle
from tests.helpers import run


@pytest.fixture(scope="session")
def dynamic_bert_bundle(session_artifacts: Path) -> PublishedBundle:
    """A tiny_bert_dynamic bundle (batch 1..8 and seq 8..32 shared by both inputs), built once."""
    result = run(session_artifacts, "model=tiny_bert_dynamic")
    assert result.bundle is not None
    return result.bundle


@pytest.fixture(scope="session")
def triton_installed() -> None:
    """Skip where the serve extra is not installed; `make test` sets PIPELINE_SERVE_TESTS=require
    so that CI fails instead of skipping."""
    from pipeline.serve.server import ServeError, TritonInstall

    try:
        TritonInstall.find()
    except ServeError as missing:
        if os.environ.get("PIPELINE_SERVE_TESTS") == "require":
            raise
        pytest.skip(f"{missing} (pip install -e '.[serve]')")
