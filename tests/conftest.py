"""Fixtures shared by the CPU suites: tiny bundles built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.stages.compile import COMPILE_CACHE
from pipeline.stages.package import PublishedBundle
from tests.helpers import run


@pytest.fixture(autouse=True)
def empty_compile_cache(request: pytest.FixtureRequest) -> None:
    """CPU tests see a process that compiled nothing before them; the GPU suite shares compiles."""
    if request.node.get_closest_marker("gpu") is None:
        COMPILE_CACHE.clear()


@pytest.fixture(scope="session")
def session_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def cnn_bundle(session_artifacts: Path) -> PublishedBundle:
    """A tiny_cnn bundle (dynamic batch 1..8), built once."""
    result = run(session_artifacts, "model=tiny_cnn")
    assert result.bundle is not None
    return result.bundle


@pytest.fixture(scope="session")
def bert_bundle(session_artifacts: Path) -> PublishedBundle:
    """A tiny_bert bundle recorded with the pre-allocated policy, built once."""
    result = run(session_artifacts, "model=tiny_bert", "runtime=preallocated")
    assert result.bundle is not None
    return result.bundle


@pytest.fixture
def bundle_copy(cnn_bundle: PublishedBundle, tmp_path: Path) -> Path:
    """A private copy of the tiny_cnn bundle that a test may damage."""
    target = tmp_path / cnn_bundle.path.name
    shutil.copytree(cnn_bundle.path, target)
    return target
