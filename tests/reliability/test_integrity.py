"""Integrity sweep and safe unpacking: nothing damaged or hostile gets deserialized."""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import load_bundle
from pipeline.bundle.pack import pack_bundle
from pipeline.runtime.format import MANIFEST_NAME
from pipeline.stages.package import PublishedBundle
from tests.helpers import flip_byte
from tests.reliability.conftest import Tally
from tests.reliability.helpers import fresh_copy, spy_deserializers

pytestmark = pytest.mark.reliability

FILES = [MANIFEST_NAME, "config.yaml", "golden.safetensors", "model/model.pt2"]


def truncate(path: Path, length: int) -> None:
    path.write_bytes(path.read_bytes()[:length])


def damages(name: str, size: int) -> dict[str, Callable[[Path], None]]:
    """Every way the sweep damages one file, by label."""
    cases: dict[str, Callable[[Path], None]] = {}
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        offset = min(size - 1, int(fraction * size))
        cases[f"flip@{offset}"] = lambda root, o=offset: flip_byte(root / name, o)
    for length in (0, size // 2, size - 1):
        cases[f"truncate->{length}"] = lambda root, n=length: truncate(root / name, n)
    cases["append"] = lambda root: (root / name).write_bytes((root / name).read_bytes() + b"\0tail")
    cases["delete"] = lambda root: (root / name).unlink()
    cases["rename"] = lambda root: (root / name).rename((root / name).with_name("renamed.bin"))
    return cases


@pytest.mark.parametrize("name", FILES)
def test_load_bundle_rejects_every_damage_naming_the_file_when_swept(
    name: str,
    cnn_bundle: PublishedBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tally: Callable[[str], Tally],
) -> None:
    check = tally("integrity sweep (flip, truncate, append, delete, rename)")
    calls = spy_deserializers(monkeypatch)
    size = (cnn_bundle.path / name).stat().st_size
    for label, damage in damages(name, size).items():
        root = fresh_copy(cnn_bundle, tmp_path)
        damage(root)
        message = check.expect_rejected(lambda root=root: load_bundle(root), mentions=name)
        assert message, f"{name} {label}: accepted"
    assert calls == [] and check.wrongly_accepted == 0


def test_load_bundle_rejects_extra_file_naming_it_when_added(
    cnn_bundle: PublishedBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tally: Callable[[str], Tally],
) -> None:
    check = tally("integrity: extra file")
    calls = spy_deserializers(monkeypatch)
    for extra in ("extra.bin", "model/extra.pt2", ".hidden"):
        root = fresh_copy(cnn_bundle, tmp_path)
        (root / extra).write_bytes(b"x")
        check.expect_rejected(lambda root=root: load_bundle(root), mentions=extra)
    root = fresh_copy(cnn_bundle, tmp_path)
    (root / "link").symlink_to(root / "config.yaml")
    check.expect_rejected(lambda: load_bundle(root), mentions="link")
    assert calls == [] and check.wrongly_accepted == 0


def archive_with(members: list[tuple[tarfile.TarInfo, bytes | None]], path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special_member(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def bomb(path: Path, size: int = 256 << 20) -> Path:
    """A tar.gz whose one member is ``size`` zero bytes (about 1000x compression)."""
    with gzip.open(path, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        info = tarfile.TarInfo("b/model/model.pt2")
        info.size = size
        tar.addfile(info, _Zeros(size))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


HOSTILE: dict[str, Callable[[Path], Path]] = {
    "parent traversal": lambda d: archive_with(
        [file_member("b/manifest.json"), file_member("../evil")], d / "a.tar.gz"
    ),
    "nested traversal": lambda d: archive_with([file_member("b/../../evil")], d / "a.tar.gz"),
    "absolute path": lambda d: archive_with(
        [file_member("b/x"), file_member(str(d / "evil"))], d / "a.tar.gz"
    ),
    "symlink": lambda d: archive_with(
        [special_member("b/link", tarfile.SYMTYPE, "/etc/passwd")], d / "a.tar.gz"
    ),
    "hardlink": lambda d: archive_with(
        [file_member("b/x"), special_member("b/hard", tarfile.LNKTYPE, "/etc/passwd")], d / "a.tar.gz"
    ),
    "device file": lambda d: archive_with([special_member("b/dev", tarfile.CHRTYPE)], d / "a.tar.gz"),
    "fifo": lambda d: archive_with([special_member("b/fifo", tarfile.FIFOTYPE)], d / "a.tar.gz"),
    "duplicate names": lambda d: archive_with(
        [file_member("b/x", b"1"), file_member("b/x", b"2")], d / "a.tar.gz"
    ),
    "two bundles": lambda d: archive_with([file_member("a/x"), file_member("b/x")], d / "a.tar.gz"),
    "decompression bomb": lambda d: bomb(d / "a.tar.gz"),
    "not gzip": lambda d: (d / "a.tar.gz").write_bytes(b"not an archive") and d / "a.tar.gz",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_load_bundle_refuses_hostile_archive_writing_nothing_outside_when_unpacking(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tally: Callable[[str], Tally]
) -> None:
    check = tally("safe unpacking (traversal, links, devices, duplicates, bomb)")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    source = tmp_path / "source"
    source.mkdir()
    archive = HOSTILE[case](source)
    calls = spy_deserializers(monkeypatch)
    check.expect_rejected(lambda: load_bundle(archive))
    assert calls == []
    assert not (tmp_path / "evil").exists() and not (source / "evil").exists()
    assert list(scratch.iterdir()) == [], "a rejected archive left files behind"
    assert check.wrongly_accepted == 0


def test_packed_bundle_unpacks_and_loads_when_archive_is_genuine(
    cnn_bundle: PublishedBundle, tmp_path: Path, tally: Callable[[str], Tally]
) -> None:
    archive = pack_bundle(cnn_bundle.path, tmp_path / "ok.tar.gz")
    assert load_bundle(archive).manifest == cnn_bundle.manifest
