"""Packing a bundle directory into one archive for shipping, and signing bundles in place.

Archives are written atomically: into a partial file beside the target, renamed into place once
complete, so a target path holds either its old contents or the whole new archive, never a
half-written one (a full disk, a kill).
"""

from __future__ import annotations

import gzip
import os
import secrets
import tarfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pipeline.errors import BundleError
from pipeline.runtime.archive import is_archive, release_unpacked
from pipeline.runtime.loader import open_bundle
from pipeline.runtime.trust import SignatureCheck, TrustPolicy, public_key_pem, sign_bundle, signing_key


class Compression(str, Enum):
    """How a packed bundle is compressed.

    ``none`` (a plain .tar) is the default: engines and fp16 weights barely compress, so gzip
    costs seconds at both ends for a few percent (docs: performance).
    """

    none = "none"
    gz = "gz"


SUFFIXES = {Compression.none: ".tar", Compression.gz: ".tar.gz"}


def compression_for_name(path: str | Path) -> Compression:
    """What an archive's name says: gzip for ``.tar.gz``/``.tgz``, else none."""
    return Compression.gz if str(path).endswith((".tar.gz", ".tgz")) else Compression.none


def compression_of(archive: Path) -> Compression:
    """How an existing archive is compressed, by its content (a ``.tar`` may hold gzip)."""
    with archive.open("rb") as stream:
        return Compression.gz if stream.read(2) == b"\x1f\x8b" else Compression.none


def write_archive(root: Path, target: Path, compression: Compression) -> Path:
    """Write the bundle directory ``root`` as the archive ``target``, atomically; ``target``."""
    if not target.parent.is_dir():
        raise BundleError(f"{target}: directory {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial-{secrets.token_hex(4)}")
    try:
        with (
            tarfile.open(partial, "w:gz", compresslevel=6)
            if compression is Compression.gz
            else tarfile.open(partial, "w") as tar
        ):
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=f"{root.name}/{path.relative_to(root).as_posix()}", recursive=False)
        os.replace(partial, target)
    except (OSError, tarfile.TarError, gzip.BadGzipFile) as exc:
        partial.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BundleError(f"{target}: cannot write the archive ({reason}); nothing written") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def pack_bundle(
    directory: str | Path, output: str | Path | None = None, compression: Compression | None = None
) -> Path:
    """Check the bundle, then write ``output`` (default ``<directory>.tar[.gz]``) holding it.

    ``compression`` defaults to what ``output``'s name says (``.tar.gz``/``.tgz``: gzip), else none.
    An archive is repacked only into an ``output`` of its own (e.g. ``.tar`` to ``.tar.gz``).
    """
    source = Path(directory)
    if is_archive(source) and source.is_file() and output is None:
        raise BundleError(f"{source}: already a packed bundle; give --output to repack it (e.g. as .tar.gz)")
    if compression is None:
        compression = compression_for_name(output) if output is not None else Compression.none
    opened = open_bundle(source)
    try:
        root = opened.root
        target = Path(output) if output is not None else source.with_name(root.name + SUFFIXES[compression])
        if target.resolve() == source.resolve():
            raise BundleError(f"{target}: the output would replace the bundle it is packed from")
        target.parent.mkdir(parents=True, exist_ok=True)
        return write_archive(root, target, compression)
    finally:
        release_unpacked(opened.root)


@dataclass(frozen=True)
class SignedBundle:
    """Where a signed bundle is, and the check of its new signature."""

    path: Path
    signature: SignatureCheck


def sign_path(path: str | Path, private_key_pem: bytes, output: str | Path | None = None) -> SignedBundle:
    """Sign the bundle at ``path`` (a directory, in place; an archive, written again atomically to
    ``output``, in place by default, same compression unless ``output``'s name says otherwise).

    The bundle is checked first (sha256 of every file); the signed result is opened again with
    the signer's public key required, so what this returns is a bundle whose signature verifies.
    """
    signing_key(private_key_pem)  # a bad key is said before anything is read or written
    source = Path(path)
    archive = is_archive(source) and source.is_file()
    if output is not None and not archive:
        raise BundleError(f"{source}: --out is for archives; a bundle directory is signed in place")
    opened = open_bundle(source, TrustPolicy())
    try:
        sign_bundle(opened.root, private_key_pem)
        target = source
        if archive:
            target = Path(output) if output is not None else source
            compression = compression_of(source) if output is None else compression_for_name(target)
            write_archive(opened.root, target, compression)
    finally:
        release_unpacked(opened.root)
    check = TrustPolicy(trusted_keys=(public_key_pem(private_key_pem),), require_signature=True)
    reopened = open_bundle(target, check)
    release_unpacked(reopened.root)
    return SignedBundle(target, reopened.signature)
