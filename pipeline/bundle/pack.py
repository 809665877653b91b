"""Packing a bundle directory into one archive for shipping."""

from __future__ import annotations

import tarfile
from enum import Enum
from pathlib import Path

from pipeline.runtime.loader import open_bundle


class Compression(str, Enum):
    """How a packed bundle is compressed.

    ``none`` (a plain .tar) is the default: engines and fp16 weights barely compress, so gzip
    costs seconds at both ends for a few percent (see the README's measured figures).
    """

    none = "none"
    gz = "gz"


SUFFIXES = {Compression.none: ".tar", Compression.gz: ".tar.gz"}


def pack_bundle(
    directory: str | Path, output: str | Path | None = None, compression: Compression | None = None
) -> Path:
    """Check the bundle, then write ``output`` (default ``<directory>.tar[.gz]``) holding it.

    ``compression`` defaults to what ``output``'s name says (``.tar.gz``/``.tgz``: gzip), else none.
    """
    if compression is None:
        gz = output is not None and str(output).endswith((".tar.gz", ".tgz"))
        compression = Compression.gz if gz else Compression.none
    root, _, _ = open_bundle(directory)
    target = Path(output) if output is not None else root.with_name(root.name + SUFFIXES[compression])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with (
        tarfile.open(partial, "w:gz") if compression is Compression.gz else tarfile.open(partial, "w") as tar
    ):
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=f"{root.name}/{path.relative_to(root).as_posix()}", recursive=False)
    partial.replace(target)
    return target
