"""``python -m pipeline.bundle``: where its output goes and what it says when there is nothing to do."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from pipeline.bundle import __main__ as bundle_tool
from pipeline.bundle.pack import pack_bundle
from pipeline.runtime.format import SIGNATURE_NAME
from pipeline.stages.package import PublishedBundle


def test_bundle_inspect_prints_table_to_stdout_when_asked(
    cnn_bundle: PublishedBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bundle_tool.main(["inspect", str(cnn_bundle.path)]) == 0
    captured = capsys.readouterr()
    assert cnn_bundle.manifest.bundle_id in captured.out and "tiny_cnn" in captured.out
    assert cnn_bundle.manifest.bundle_id not in captured.err


def test_bundle_help_names_every_command_when_described(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bundle_tool.main(["--help"])
    description = capsys.readouterr().out.split("\n\n")[1]  # the paragraph after the usage line
    commands = ["pack", "inspect", "verify", "bench", "coldstart", "warm", "keygen", "sign", "gc"]
    assert all(command in description for command in commands), description


def test_bundle_gc_says_so_when_nothing_is_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bundle_tool.main(["gc", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("nothing to remove: no staging directory of a dead builder")


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys" / "signer.pem", tmp_path / "keys" / "signer.pub.pem"
    private.parent.mkdir()
    assert bundle_tool.main(["keygen", str(private), str(public)]) == 0
    return private, public


def archive_names(archive: Path) -> list[str]:
    with tarfile.open(archive, "r:*") as tar:
        return [Path(name).name for name in tar.getnames()]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_bundle_sign_writes_the_signature_into_the_archive_when_given_an_archive(
    cnn_bundle: PublishedBundle,
    tmp_path: Path,
    key_files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
) -> None:
    private, public = key_files
    archive = pack_bundle(cnn_bundle.path, tmp_path / f"shipped{suffix}")
    compressed = archive.read_bytes()[:2] == b"\x1f\x8b"
    capsys.readouterr()
    assert bundle_tool.main(["sign", str(archive), "--key", str(private)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(archive)
    assert SIGNATURE_NAME in archive_names(archive)
    assert (archive.read_bytes()[:2] == b"\x1f\x8b") == compressed  # same kind of archive, in place
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    monkeypatch.setenv("PIPELINE_TRUSTED_KEYS", str(public))
    monkeypatch.setenv("PIPELINE_REQUIRE_SIGNATURE", "1")
    assert bundle_tool.main(["verify", str(archive)]) == 0
    assert f"signature: signed, verified with {public}" in capsys.readouterr().out


def test_bundle_sign_writes_a_new_archive_and_leaves_the_source_alone_when_given_out(
    cnn_bundle: PublishedBundle, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    archive = pack_bundle(cnn_bundle.path, tmp_path / "shipped.tar")
    before = archive.read_bytes()
    target = tmp_path / "signed.tar.gz"
    assert bundle_tool.main(["sign", str(archive), "--key", str(key_files[0]), "--out", str(target)]) == 0
    assert archive.read_bytes() == before
    assert SIGNATURE_NAME in archive_names(target) and target.read_bytes()[:2] == b"\x1f\x8b"


def test_bundle_verify_says_unsigned_when_the_bundle_has_no_signature(
    cnn_bundle: PublishedBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bundle_tool.main(["verify", str(cnn_bundle.path)]) == 0
    assert "signature: unsigned" in capsys.readouterr().out


def test_bundle_pack_refuses_in_one_line_when_asked_to_pack_an_archive_in_place(
    cnn_bundle: PublishedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = pack_bundle(cnn_bundle.path, tmp_path / "shipped.tar")
    assert bundle_tool.main(["pack", str(archive)]) != 0
    assert "already a packed bundle" in capsys.readouterr().err
    assert bundle_tool.main(["pack", str(archive), "-o", str(tmp_path / "shipped.tar.gz")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "shipped.tar.gz")
    assert archive_names(tmp_path / "shipped.tar.gz") == archive_names(archive)


@pytest.mark.parametrize("case", ["missing directory", "existing key"])
def test_bundle_keygen_refuses_in_one_line_and_keeps_existing_keys_when_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    if case == "missing directory":
        private, public = tmp_path / "nowhere" / "k.pem", tmp_path / "nowhere" / "k.pub.pem"
    else:
        private.write_text("precious")
    assert bundle_tool.main(["keygen", str(private), str(public)]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert case != "existing key" or private.read_text() == "precious"
    assert not public.exists()
