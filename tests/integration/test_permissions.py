"""Published bundles and packed archives are readable by others as the user's umask allows."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.bundle.pack import pack_bundle
from tests.helpers import run


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_package_publishes_group_and_other_readable_bundle_when_umask_is_022(
    tmp_path: Path, umask_022: None
) -> None:
    result = run(tmp_path, "model=tiny_cnn")
    assert result.bundle is not None
    bundle = result.bundle.path
    published = [bundle, *bundle.rglob("*")]
    assert any(path.name == "golden.safetensors" for path in published)
    for path in published:
        mode = path.stat().st_mode
        wanted = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(mode) == wanted, f"{path.relative_to(tmp_path)}: {oct(stat.S_IMODE(mode))}"
    archive = pack_bundle(bundle, tmp_path / "shipped.tar")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o644
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            wanted = 0o755 if member.isdir() else 0o644
            assert member.mode == wanted, f"{member.name}: {oct(member.mode)}"
