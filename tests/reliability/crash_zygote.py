"""Kills a bundle builder at random and targeted points, and reports what each kill left.

    python -m tests.reliability.crash_zygote ARTIFACTS TRIALS SEED

This process imports everything once but runs no torch kernels, so forking builders from it is
safe; each child builds tiny_cnn bundles back to back (force=true) until it is killed with
SIGKILL. A third of the kills land at a random time, the others the moment a staging directory
holds its golden file or its manifest (the publish window). After each kill, every directory
under a final name must be a complete bundle. One JSON line per trial goes to stdout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from pipeline.bundle.store import STAGING_PREFIX
from pipeline.errors import BundleError
from pipeline.runner import run_pipeline
from pipeline.runtime.loader import open_bundle
from pipeline.runtime.trust import TrustPolicy
from tests.helpers import config_for

TARGETS = (None, "golden.safetensors", "manifest.json")


def builder(artifacts: Path) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    config = config_for(artifacts, "model=tiny_cnn", "force=true", "verify.random_input_sets=0")
    while True:
        run_pipeline(config)


def wait_for(bundles: Path, target: str | None, delay: float, timeout: float = 20.0) -> str:
    if target is None:
        time.sleep(delay)
        return f"after {delay:.2f}s"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(bundles.glob(f"{STAGING_PREFIX}*/{target}")):
            return f"when staging held {target}"
        time.sleep(0.0005)
    return f"timeout waiting for {target}"


def main() -> None:
    artifacts, trials, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    bundles = artifacts / "bundles"
    rng = random.Random(seed)
    for trial in range(trials):
        pid = os.fork()
        if pid == 0:
            try:
                builder(artifacts)
            finally:
                os._exit(0)
        target = TARGETS[trial % len(TARGETS)]
        moment = wait_for(bundles, target, rng.uniform(0.0, 6.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        invalid = []
        for path in sorted(bundles.iterdir()) if bundles.exists() else []:
            if path.name.startswith("."):
                continue
            try:
                open_bundle(path, TrustPolicy())
            except BundleError as error:
                invalid.append(f"{path.name}: {error}")
        staging = len(list(bundles.glob(f"{STAGING_PREFIX}*"))) if bundles.exists() else 0
        print(
            json.dumps({"trial": trial, "killed": moment, "invalid": invalid, "staging_left": staging}),
            flush=True,
        )


if __name__ == "__main__":
    main()
