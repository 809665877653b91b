"""Where bundles live: ``<artifacts_dir>/bundles``; staged, locked and renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.runtime.format import MANIFEST_NAME

STAGING_PREFIX = ".staging-"


class BundleStore:
    """A directory of published bundles. Bundles appear only complete, by an atomic rename."""

    def __init__(self, artifacts_dir: str | Path) -> None:
        self.root = Path(artifacts_dir) / "bundles"
        self.root.mkdir(parents=True, exist_ok=True)

    def lock(self, bundle_id: str) -> FileLock:
        """A cross-process lock for building the bundle ``bundle_id``."""
        locks = self.root / ".locks"
        locks.mkdir(exist_ok=True)
        return FileLock(str(locks / f"{bundle_id}.lock"))

    def find(self, bundle_id: str) -> Path | None:
        """The published bundle with this id, if any."""
        for path in self.root.glob(f"*-{bundle_id}"):
            if (path / MANIFEST_NAME).is_file():
                return path
        return None

    def staging_dir(self, bundle_id: str) -> Path:
        """A fresh private directory to assemble a bundle in."""
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{bundle_id}-", dir=self.root))

    def publish(self, staging: Path, name: str, bundle_id: str) -> Path:
        """Rename a complete staging directory to ``name``, replacing an older bundle of that name."""
        final = self.root / name
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{bundle_id}-retired-", dir=self.root))
            os.replace(final, retired / name)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
        return final

    def collect_garbage(self) -> list[Path]:
        """Remove staging directories left by builders that died (kill -9, power loss).

        A staging directory belongs to the build holding its bundle's lock; one whose lock can be
        taken at once has no live builder. Returns what was removed.
        """
        removed = []
        for staging in sorted(self.root.glob(f"{STAGING_PREFIX}*")):
            bundle_id = staging.name[len(STAGING_PREFIX) :].split("-", 1)[0]
            lock = self.lock(bundle_id)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
            finally:
                lock.release()
        return removed
