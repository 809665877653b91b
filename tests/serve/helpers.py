"""Helpers of the serving suites: requests, the CLI in a subprocess, processes from /proc."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from tests.helpers import REPO, subprocess_env

#: How long before SIGTERM a request must have started to count as received by the server.
CONNECT_MARGIN_S = 0.2


def bert_request(batch: int, seq: int, other_seq: int | None = None) -> dict[str, np.ndarray]:
    """A tiny BERT request: token ids, a padding mask (each row one token shorter than the one
    before, at least one token), token types (``other_seq``: a disagreeing sequence length)."""
    lengths = np.maximum(seq - np.arange(batch), 1)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": np.ones((batch, seq), np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros((batch, other_seq or seq), np.int32),
    }


def renamed(request: dict[str, np.ndarray], old: str, new: str) -> dict[str, np.ndarray]:
    """``request`` with its input ``old`` sent under the name ``new``."""
    return {(new if name == old else name): value for name, value in request.items()}


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=subprocess_env(),
    )


def wait_for_line(process: subprocess.Popen[str], prefix: str, timeout_s: float) -> dict[str, str]:
    """Read the CLI's stdout until a line starts with ``prefix``; every ``key: value`` line seen."""
    seen: dict[str, str] = {}
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            key, _, value = line.partition(": ")
            seen[key] = value.strip()
            if line.startswith(prefix):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(timeout_s):
        process.kill()
        _, stderr = process.communicate(timeout=30)
        raise AssertionError(f"no {prefix!r} line within {timeout_s} s: {stderr[-3000:]}")
    return seen
