"""Building blocks for the reliability checks: a small bundle, spies on deserializers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pipeline.runtime.format import read_manifest, write_manifest
from pipeline.stages.package import PublishedBundle


def fresh_copy(bundle: PublishedBundle, directory: Path, name: str = "bundle") -> Path:
    """A private copy of ``bundle`` to damage."""
    target = directory / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bundle.path, target)
    return target


def spy_deserializers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the model deserializer with a recorder; returns the list of recorded calls."""
    calls: list[str] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append(str(a[0] if a else "")))
    return calls


def rewrite_manifest(root: Path, **changes: object) -> None:
    """Edit manifest fields as the bundle's author could (the digest is recomputed)."""
    manifest = read_manifest(root)
    for key, value in changes.items():
        setattr(manifest, key, value)
    write_manifest(root, manifest)
