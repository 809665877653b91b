"""``python -m pipeline.bundle``: where its output goes and what it says when there is nothing to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bundle import __main__ as bundle_tool
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
