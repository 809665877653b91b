"""Where bundles live: ``<artifacts_dir>/bundles``; staged, locked and renamed into place."""

from __future__ import annotations

import os
import secrets
import shutil
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
        """A fresh directory to assemble a bundle in (it becomes the bundle: umask permissions)."""
        return fresh_directory(self.root, f"{STAGING_PREFIX}{bundle_id}-")

    def publish(self, staging: Path, name: str, bundle_id: str) -> Path:
        """Rename a complete staging directory to ``name``, replacing an older bundle of that name."""
        final = self.root / name
        if final.exists():
            retired = fresh_directory(self.root, f"{STAGING_PREFIX}{bundle_id}-retired-")
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


def fresh_directory(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory under ``parent``, with the permissions of the user's umask.

    Not ``tempfile.mkdtemp``: it makes directories 0700, and a staging directory becomes the
    published bundle, which other users (a shared ``artifacts_dir``, an unpacked ``.tar``) must be
    able to read like any other file the user creates.
    """
    while True:
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
