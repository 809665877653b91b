"""Long jobs stopped by SIGTERM (docker stop, Kubernetes, SLURM) or Ctrl-C, and disks that fill up
or cannot be written: one line, the shell's exit code, nothing published, no staging left."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.bundle.pack import pack_bundle
from pipeline.bundle.store import STAGING_PREFIX
from pipeline.failures import write_log
from tests.helpers import SLEEPY, SLEEPY_MARKER, SLEEPY_SECONDS, run, subprocess_env
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.reliability


def start(args: list[str], marker: Path, cwd: Path) -> subprocess.Popen[str]:
    env = {**subprocess_env(), SLEEPY_SECONDS: "60", SLEEPY_MARKER: str(marker)}
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_when_sleeping(process: subprocess.Popen[str], marker: Path, signum: int) -> tuple[int, str]:
    """Send ``signum`` once the model sleeps inside a stage; the exit code and stderr."""
    deadline = time.monotonic() + 120
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            _, err = process.communicate()
            raise AssertionError(f"the job ended before the model ran: {process.returncode}\n{err[-2000:]}")
        time.sleep(0.05)
    process.send_signal(signum)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"signal {signum} did not stop the job within 60 s") from None
    return process.returncode, err


def left_behind(artifacts: Path) -> list[Path]:
    """Bundles and staging directories under ``artifacts``."""
    bundles = artifacts / "bundles"
    return sorted(p for p in bundles.glob("*") if p.name != ".locks") if bundles.is_dir() else []


STOPS = {
    "SIGTERM, a build": (["pipeline", *SLEEPY], signal.SIGTERM, 143, "SIGTERM"),
    "Ctrl-C, a build": (["pipeline", *SLEEPY], signal.SIGINT, 130, "Ctrl-C"),
    "SIGTERM, a sweep": (
        ["pipeline", "-m", *SLEEPY, "runtime=standard,preallocated"],
        signal.SIGTERM,
        143,
        "SIGTERM",
    ),
}


@pytest.mark.parametrize("case", list(STOPS))
def test_pipeline_stops_in_one_line_and_publishes_nothing_when_signalled_during_a_stage(
    case: str, tmp_path: Path, tally: Callable[[str], Tally]
) -> None:
    command, signum, code, name = STOPS[case]
    artifacts = tmp_path / "artifacts"
    process = start([*command, f"artifacts_dir={artifacts}"], tmp_path / "sleeping", tmp_path)
    returncode, err = stop_when_sleeping(process, tmp_path / "sleeping", signum)
    lines = [line for line in err.splitlines() if "interrupted" in line]
    check = tally("stopped by a signal: one line, its exit code, nothing published")
    check.count(rejected=returncode == code and lines != [] and left_behind(artifacts) == [])
    assert returncode == code, err[-2000:]
    assert lines and f"interrupted ({name}) during" in lines[-1] and "nothing published" in lines[-1], err
    assert "Traceback" not in err, err[-2000:]
    assert left_behind(artifacts) == [], left_behind(artifacts)
    assert not list((artifacts / "bundles").glob(f"{STAGING_PREFIX}*"))


def test_bundle_tool_stops_in_one_line_when_sigterm_arrives_during_bench(tmp_path: Path) -> None:
    result = run(tmp_path / "build", "model=tiny_cnn")
    assert result.bundle is not None
    archive = pack_bundle(result.bundle.path, tmp_path / "tiny.tar")
    unpacked_before = set(Path(tempfile.gettempdir()).glob("bundle-*"))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.bundle", "bench", str(archive), "--iterations", "100000000"],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6)  # loaded and timing calls by now (about 2 s to load on this kind of host)
    assert process.poll() is None, process.communicate()[1][-2000:]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGTERM)") and "Traceback" not in err, err
    assert set(Path(tempfile.gettempdir()).glob("bundle-*")) <= unpacked_before  # the unpacked copy is gone


def limited_file_size(limit: int) -> Callable[[], None]:
    """For a child process: writes past ``limit`` bytes fail (EFBIG) instead of killing it."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_pipeline_fails_in_one_block_and_leaves_no_staging_when_a_write_fails_mid_build(
    tmp_path: Path, tally: Callable[[str], Tally]
) -> None:
    artifacts = tmp_path / "artifacts"
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline", "model=tiny_bert", f"artifacts_dir={artifacts}"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited_file_size(64 << 10),  # the bundle's model file is larger
        check=False,
    )
    err = completed.stderr
    check = tally("a write that fails mid-build (file too large / disk full): exit 1, no staging")
    check.count(rejected=completed.returncode == 1 and left_behind(artifacts) == [])
    assert completed.returncode == 1, err[-3000:]  # not SIGABRT (134) from torch's archive writer
    assert "error: serialize failed for model tiny_bert" in err and "File too large" in err, err[-3000:]
    assert "Traceback" not in err and "frame #" not in err, err[-3000:]
    assert left_behind(artifacts) == []


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_pipeline_refuses_in_one_line_before_writing_when_artifacts_dir_cannot_be_a_directory(
    kind: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    target = blocker if kind == "a file" else blocker / "artifacts"
    for args in (["model=tiny_cnn"], ["-m", "model=tiny_cnn"]):
        completed = subprocess.run(
            [sys.executable, "-m", "pipeline", *args, f"artifacts_dir={target}"],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 1 and len(lines) == 1, completed.stderr[-2000:]
        assert lines[0].startswith(f"error: artifacts_dir={target}:"), lines
    assert blocker.read_text() == "a file"


def test_write_log_writes_to_stderr_instead_when_the_log_cannot_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("not a directory")
    assert write_log(blocker / "error.log", "Traceback: the whole story\n") is None
    err = capsys.readouterr().err
    assert "could not be written" in err and "Traceback: the whole story" in err


SLOW_CLEANUP = """
import sys, time
from pathlib import Path
from pipeline.signals import clean_stop

marker = Path(sys.argv[1])
with clean_stop("stopped"):
    try:
        print("working", flush=True)
        time.sleep(60)
    finally:
        time.sleep(1.5)  # a cleanup that takes a while, e.g. a server's graceful stop
        marker.write_text("cleaned up")
"""


def test_clean_stop_finishes_its_cleanup_when_a_second_sigterm_arrives_during_it(tmp_path: Path) -> None:
    # GNU timeout sends SIGTERM to the process and then to its process group; supervisors repeat it.
    marker = tmp_path / "cleaned"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLEANUP, str(marker)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "working\n"
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # inside the cleanup now
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert marker.read_text() == "cleaned up"
    assert err.strip().splitlines() == ["interrupted (SIGTERM); stopped"], err
