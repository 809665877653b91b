"""Triton Python backend entry point (``1/model.py``), written by ``python -m pipeline.serve
export-triton``: the serving code itself lives in :mod:`pipeline.serve.triton_backend`.

Triton's backend stub embeds libpython with that interpreter's own ``sys.path``, not the
virtual environment's: ``python -m pipeline.serve`` passes its own ``sys.path`` in
``PIPELINE_SERVE_SYS_PATH``, put first here so that ``pipeline``, torch and numpy < 2 come from
the environment that exported and launched the server. A Triton install whose Python already
has the package (a container image) needs nothing.
"""

import os
import site
import sys


def _use_serving_environment() -> None:
    entries = [entry for entry in os.environ.get("PIPELINE_SERVE_SYS_PATH", "").split(os.pathsep) if entry]
    for entry in reversed(entries):
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    for entry in entries:
        # .pth files: editable installs hook their packages in from there.
        if os.path.isdir(entry) and any(name.endswith(".pth") for name in os.listdir(entry)):
            site.addsitedir(entry)


_use_serving_environment()

from pipeline.serve.triton_backend import TritonPythonModel  # noqa: E402

__all__ = ["TritonPythonModel"]
