"""Safe unpacking of shipped bundles (``.tar`` or ``.tar.gz``).

Every member is vetted before anything is written: only regular files and directories, relative
names without ``..``, no duplicates, one top-level bundle directory, and a bound on the total
unpacked size and on the compression ratio (a decompression bomb declares its sizes honestly in
the tar headers). Extraction then runs with Python's ``data`` filter as a second line of defence.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from pipeline.errors import BundleError

MAX_UNPACKED_BYTES = int(os.environ.get("PIPELINE_MAX_BUNDLE_BYTES", 64 << 30))
MAX_MEMBERS = 10_000
# Engines and weights barely compress; a ratio far above this is zeros, i.e. a bomb.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_ABOVE_BYTES = 64 << 20


def vet_members(archive: Path, tar: tarfile.TarFile) -> str:
    """Check every member; return the name of the single top-level directory."""
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise BundleError(f"{archive.name}: {len(members)} entries, more than {MAX_MEMBERS}")
    seen: set[str] = set()
    tops: set[str] = set()
    total = 0
    for member in members:
        name = member.name
        path = PurePosixPath(name)
        if path.is_absolute() or name.startswith("/") or ".." in path.parts or "\\" in name:
            raise BundleError(f"{archive.name}: entry {name!r} points outside the bundle")
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise BundleError(f"{archive.name}: entry {name!r} is a {kind}; bundles hold only files")
        normalized = path.as_posix().rstrip("/")
        if normalized in seen:
            raise BundleError(f"{archive.name}: entry {name!r} appears twice")
        seen.add(normalized)
        tops.add(path.parts[0])
        total += member.size
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(
                f"{archive.name}: unpacks to more than {MAX_UNPACKED_BYTES} bytes "
                "(PIPELINE_MAX_BUNDLE_BYTES raises the limit)"
            )
    packed = max(1, archive.stat().st_size)
    if total > RATIO_CHECK_ABOVE_BYTES and total / packed > MAX_COMPRESSION_RATIO:
        raise BundleError(
            f"{archive.name}: {total} bytes from {packed} packed (ratio {total // packed}): "
            "refusing a likely decompression bomb"
        )
    if len(tops) != 1:
        raise BundleError(f"{archive.name}: expected one bundle directory inside, found {sorted(tops)}")
    return tops.pop()


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    """True for a file named like a packed bundle."""
    return path.name.endswith(ARCHIVE_SUFFIXES)


def split_archive_suffix(path: Path) -> tuple[str, str]:
    """``path``'s name without its archive suffix, and the suffix ('' for a directory)."""
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):  # .tar.gz before .tar
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)], suffix
    return path.name, ""


#: Bundle directories unpacked by this process -> the temporary directory holding each.
_unpacked: dict[Path, Path] = {}


def _remove_all_unpacked() -> None:
    for root in list(_unpacked):
        release_unpacked(root)


atexit.register(_remove_all_unpacked)


def release_unpacked(root: Path) -> None:
    """Remove the temporary directory ``root`` was unpacked into (nothing for a directory this
    process did not unpack)."""
    target = _unpacked.pop(root, None)
    if target is not None:
        shutil.rmtree(target, ignore_errors=True)


def extract_bundle(archive: Path) -> Path:
    """Unpack ``archive`` into a new private temporary directory; return the bundle directory.

    The directory is removed by :func:`release_unpacked` (a loaded bundle's ``close()``), or at
    interpreter exit at the latest.
    """
    target = Path(tempfile.mkdtemp(prefix="bundle-"))
    try:
        with tarfile.open(archive, "r:*") as tar:  # by content: a .tar may hold gzip, and back
            top = vet_members(archive, tar)
            tar.extractall(target, filter="data")
    except BundleError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BundleError(f"{archive.name}: cannot unpack ({exc})") from None
    root = target / top
    if not root.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        raise BundleError(f"{archive.name}: expected one bundle directory inside the archive")
    _unpacked[root] = target
    return root
