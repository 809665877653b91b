"""Known fixes for failures inside stages, so a failed run ends in a hint instead of a traceback.

The rules read the exception's type and message only: they never decide that a run failed, only
what to suggest once it has.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline.errors import StageFailure, StageInterrupted

FAILURE_LOG = "error.log"
TORCH_LOG = "torch.log"


class _HeldLines(logging.Handler):
    """Formats records as the handler it stands in for would have, into a list."""

    def __init__(self, lines: list[str], replaced: logging.Handler) -> None:
        super().__init__(replaced.level)
        self.lines = lines
        self.setFormatter(replaced.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def held_torch_logs(lines: list[str]) -> Iterator[list[str]]:
    """Hold torch's own log lines (``W1202 ...`` / ``E1202 ...`` on stderr) in ``lines`` for the
    duration: they would bury the stage lines and the failure block, and belong in the run's
    log files (:func:`write_failure_log`, :func:`write_torch_log`)."""
    swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or not (name == "torch" or name.startswith("torch.")):
            continue
        for handler in list(logger.handlers):
            # torch's handler is its own class with a ``stream`` property: match what it writes to.
            if getattr(handler, "stream", None) in (sys.stderr, sys.__stderr__):
                held = _HeldLines(lines, handler)
                logger.removeHandler(handler)
                logger.addHandler(held)
                swapped.append((logger, handler, held))
    try:
        yield lines
    finally:
        for logger, original, stand_in in swapped:
            logger.removeHandler(stand_in)
            logger.addHandler(original)


def write_torch_log(lines: list[str], directory: Path) -> Path | None:
    """Write torch's held log lines to ``directory``; the log's path (None when there were none,
    or when it could not be written: then the lines go to stderr)."""
    if not lines:
        return None
    return write_log(directory / TORCH_LOG, "\n".join(lines) + "\n")


def write_log(log: Path, text: str) -> Path | None:
    """Write ``text`` to ``log``; where that fails (a full disk, a read-only directory), write it
    to stderr instead, saying why, and return None. A log must never hide the error it records."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
    except OSError as exc:
        with contextlib.suppress(OSError):
            log.unlink(missing_ok=True)  # half-written at best
        sys.stderr.write(f"({log} could not be written: {exc.strerror or exc}; its contents follow)\n{text}")
        return None
    return log


def failure_hint(error: BaseException) -> str | None:
    """A one-line suggestion for ``error``, where one is known."""
    text = str(error)
    lowered = text.lower()
    if "Suggested fixes:" in text:
        block = text.split("Suggested fixes:", 1)[1].strip().split("\n\n", 1)[0]
        fixes = [line.strip() for line in block.splitlines() if line.strip()]
        return "torch.export suggests: " + "; ".join(fixes[:4])
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            "no room to write (a full disk, a quota or a file size limit): free space where "
            "artifacts_dir points, or set artifacts_dir to another disk"
        )
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return f"cannot write {error.filename or 'a file'}: check the permissions of artifacts_dir"
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in lowered:
        return (
            "the GPU ran out of memory: use smaller inputs (model.inputs), free the GPU, "
            "or build with runtime=dynamic"
        )
    if "data-dependent" in lowered or "GuardOnDataDependent" in type(error).__name__:
        return (
            "torch.export cannot branch on tensor values: make the branch independent of the data "
            "or express it with torch.cond"
        )
    if "unable to create tensorrt execution context" in lowered:
        return (
            "TensorRT built the engine but could not compile its kernels for this GPU (TensorRT-RTX "
            "fails on cuDNN attention graphs on Hopper): for transformers, set "
            "model.architecture.attn_implementation=eager; the log above the error names the layer"
        )
    if "converter" in lowered and "support" in lowered:
        return (
            "TensorRT cannot convert an operator: compile.min_block_size decides how small a block "
            "stays in PyTorch"
        )
    return None


def write_failure_log(
    failure: StageFailure, directory: Path, torch_lines: list[str] | None = None
) -> Path | None:
    """Write ``failure``'s full traceback (the original exception's), after what torch logged
    during the run, to ``directory``; its path (None: it went to stderr, see :func:`write_log`)."""
    header = f"stage: {failure.stage}\nmodel: {failure.model}\nhint: {failure.hint or '-'}\n\n"
    logged = "torch logged:\n" + "\n".join(torch_lines) + "\n\n" if torch_lines else ""
    return write_log(
        directory / FAILURE_LOG, header + logged + "".join(traceback.format_exception(failure.cause))
    )


def write_interrupt_log(interrupt: StageInterrupted, directory: Path) -> Path | None:
    """Write where Ctrl-C or SIGTERM stopped the run (its traceback) to ``directory``; the log's
    path (None: it went to stderr)."""
    cause = interrupt.__cause__ or interrupt
    header = f"stage: {interrupt.stage}\ninterrupted: {interrupt.signal_name}\n\n"
    return write_log(directory / FAILURE_LOG, header + "".join(traceback.format_exception(cause)))
