"""Crash-safe publishing (kill -9 at random points) and concurrent builds of one config."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.bundle.store import STAGING_PREFIX, BundleStore
from pipeline.errors import BundleError
from pipeline.runtime.loader import open_bundle
from pipeline.runtime.trust import TrustPolicy
from tests.helpers import REPO, subprocess_env
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.reliability
ENV = subprocess_env()
TRIALS = 51


def test_builder_killed_at_random_points_never_leaves_partial_bundle_under_final_name(
    tmp_path: Path, tally: Callable[[str], Tally]
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.reliability.crash_zygote", str(tmp_path), str(TRIALS), "7"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=1200,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    trials = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(trials) == TRIALS
    check = tally("crash-safe publish (kill -9 during builds)")
    for trial in trials:
        check.count(rejected=not trial["invalid"])
    assert [t for t in trials if t["invalid"]] == []
    assert sum("staging held" in t["killed"] for t in trials) >= TRIALS // 2, (
        "kills missed the publish window"
    )
    leftovers = sum(t["staging_left"] for t in trials)
    store = BundleStore(tmp_path)
    removed = store.collect_garbage()
    assert not list(store.root.glob(f"{STAGING_PREFIX}*"))
    assert leftovers == 0 or removed


def test_gc_keeps_staging_directory_of_a_live_builder(tmp_path: Path) -> None:
    store = BundleStore(tmp_path)
    live = store.staging_dir("abc123")
    dead = store.staging_dir("def456")
    with store.lock("abc123"):
        removed = store.collect_garbage()
    assert removed == [dead] and live.exists() and not dead.exists()


def test_concurrent_builds_of_one_config_publish_exactly_one_bundle(
    tmp_path: Path, tally: Callable[[str], Tally]
) -> None:
    builders = 4
    bundles = tmp_path / "bundles"
    torn: list[str] = []
    intact_reads: list[bool] = []  # one entry per read, appended by the reader thread only
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for path in bundles.iterdir() if bundles.exists() else []:
                if path.name.startswith("."):
                    continue
                try:
                    open_bundle(path, TrustPolicy())
                except BundleError as error:
                    torn.append(f"{path.name}: {error}")
                    intact_reads.append(False)
                else:
                    intact_reads.append(True)

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "model=tiny_cnn", f"artifacts_dir={tmp_path}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=REPO,
        )
        for _ in range(builders)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    stop.set()
    watcher.join()
    assert all(process.returncode == 0 for process in processes), [err[-500:] for _, err in outputs]
    published = [p for p in bundles.iterdir() if not p.name.startswith(".")]
    built = sum("✓ package" in err for _, err in outputs)
    reused = sum("already built" in err for _, err in outputs)
    check = tally("concurrent builds of one config (4 processes)")
    # One observation per builder: it built the bundle or reused it (not both, not neither),
    # and it points at the one bundle published.
    for process, (out, err) in zip(processes, outputs, strict=True):
        lines = out.strip().splitlines()
        one_outcome = ("✓ package" in err) != ("already built" in err)
        names_it = len(published) == 1 and lines[-1:] == [f"bundle: {published[0]}"]
        check.count(rejected=process.returncode == 0 and one_outcome and names_it)
    # One observation per read of a published bundle while the builders ran.
    reads_check = tally("torn reads while 4 builders publish")
    for intact in intact_reads:
        reads_check.count(rejected=intact)
    assert len(published) == 1 and (built, reused) == (1, builders - 1)
    assert {out.strip().splitlines()[-1] for out, _ in outputs} == {f"bundle: {published[0]}"}
    assert torn == []
