"""Packing a bundle directory into one .tar.gz for shipping."""

from __future__ import annotations

import tarfile
from pathlib import Path

from pipeline.bundle.loader import open_bundle


def pack_bundle(directory: str | Path, output: str | Path | None = None) -> Path:
    """Check the bundle, then write ``<output or directory>.tar.gz`` holding its directory."""
    root, _ = open_bundle(directory)
    target = Path(output) if output is not None else root.with_name(root.name + ".tar.gz")
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=f"{root.name}/{path.relative_to(root).as_posix()}", recursive=False)
    partial.replace(target)
    return target
