"""Integrity of TensorRT engine files: a damaged, swapped or missing engine is never loaded.

The bundle here has the TensorRT layout (a graph file and two raw engine files listed in the
manifest's ``engines``) around a CPU model, so the sweep runs without a GPU: every rejection must
come from the integrity checks, naming the engine file, before any engine or graph is read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import load_bundle
from pipeline.runtime import engine_graph
from pipeline.runtime.engine_graph import EngineRecord
from pipeline.runtime.format import RUNTIME_CACHE_NAME, describe_files, read_manifest, write_manifest
from pipeline.stages.package import PublishedBundle
from tests.reliability.conftest import Tally
from tests.reliability.helpers import rewrite_manifest
from tests.reliability.test_integrity import damages

pytestmark = pytest.mark.reliability

ENGINES = [
    EngineRecord(
        f"_run_on_acc_{i}_engine", f"engines/_run_on_acc_{i}.engine", 3, 1, ["8", "n", "d", "", "i", "o"]
    )
    for i in range(2)
]
#: TensorRT-RTX bundles ship a runtime cache beside the engines: swept like them.
RUNTIME_CACHE = {"file": RUNTIME_CACHE_NAME, "key": {"sm": "9.0", "tensorrt": "1", "cuda": "13.0"}}
SWEPT_FILES = [*(record.file for record in ENGINES), RUNTIME_CACHE_NAME]


@pytest.fixture
def engine_bundle(cnn_bundle: PublishedBundle, tmp_path: Path) -> Path:
    """A two-engine TensorRT-layout bundle with a runtime cache, with valid digests."""
    root = tmp_path / "template"
    shutil.copytree(cnn_bundle.path, root)
    (root / "engines").mkdir()
    for record in ENGINES:
        (root / record.file).write_bytes(os.urandom(4096))
    (root / RUNTIME_CACHE_NAME).write_bytes(os.urandom(2048))
    manifest = read_manifest(root)
    manifest.runtime_cache = dict(RUNTIME_CACHE)
    manifest.backend = "tensorrt"
    manifest.engine_count = len(ENGINES)
    manifest.engines = [record.to_dict() for record in ENGINES]
    manifest.files = describe_files(root)
    write_manifest(root, manifest)
    return root


def copy_of(template: Path, directory: Path) -> Path:
    target = directory / "bundle"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target)
    return target


def swap(root: Path) -> None:
    first, second = (root / record.file for record in ENGINES)
    data = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(data)


def drop_listed(root: Path) -> None:
    """Remove an engine with its manifest entries, as the bundle's author could (new digest)."""
    (root / ENGINES[1].file).unlink()
    manifest = read_manifest(root)
    rewrite_manifest(
        root,
        files=[f for f in manifest.files if f.path != ENGINES[1].file],
        engines=manifest.engines[:1],
    )


@pytest.mark.parametrize("swept", SWEPT_FILES)
def test_load_bundle_rejects_every_damage_to_an_engine_file_naming_it_when_swept(
    swept: str,
    engine_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tally: Callable[[str], Tally],
) -> None:
    check = tally("engine and runtime cache files (flip, truncate, append, delete, rename)")
    reads: list[str] = []
    monkeypatch.setattr(engine_graph, "load_graph", lambda *a, **k: reads.append("graph"))
    size = (engine_bundle / swept).stat().st_size
    for label, damage in damages(swept, size).items():
        root = copy_of(engine_bundle, tmp_path)
        damage(root)
        assert check.expect_rejected(lambda root=root: load_bundle(root), mentions=swept), label
    assert reads == [] and check.wrongly_accepted == 0


def test_load_bundle_rejects_swapped_or_dropped_engines_when_tampered(
    engine_bundle: Path, tmp_path: Path, tally: Callable[[str], Tally]
) -> None:
    check = tally("engine files (swap two, drop one)")
    root = copy_of(engine_bundle, tmp_path)
    swap(root)
    check.expect_rejected(lambda: load_bundle(root), mentions=ENGINES[0].file)
    root = copy_of(engine_bundle, tmp_path)
    (root / ENGINES[1].file).unlink()
    check.expect_rejected(lambda: load_bundle(root), mentions=ENGINES[1].file)
    root = copy_of(engine_bundle, tmp_path)
    drop_listed(root)
    check.expect_rejected(lambda: load_bundle(root), mentions="engine_count")
    assert check.wrongly_accepted == 0
