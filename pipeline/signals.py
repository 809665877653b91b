"""Stopping long jobs cleanly: SIGTERM is handled like Ctrl-C.

``docker stop``, Kubernetes and SLURM stop a process with SIGTERM, whose default action kills it
on the spot: no ``finally`` runs, so a build's staging directory (hundreds of MB) or an unpacked
archive would be left behind. While :func:`sigterm_raises` is open, SIGTERM raises
:class:`~pipeline.errors.Terminated` (a ``KeyboardInterrupt``) where the main thread is, exactly
as SIGINT raises ``KeyboardInterrupt``, so every cleanup that Ctrl-C runs runs for SIGTERM too;
a SIGTERM that follows the first is ignored, so it cannot cut that cleanup short.
:func:`clean_stop` wraps a whole command: a stop that reaches it is one line on stderr and the
shell's exit code for the signal (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from pipeline.errors import Terminated, interrupt_exit_code

#: Set by the first SIGTERM while :func:`sigterm_raises` is open, until the outermost one closes.
_stopping = False


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    global _stopping
    if _stopping:
        # The stop is under way: a second SIGTERM (GNU ``timeout`` signals the process and then
        # its process group; supervisors repeat) must not interrupt the cleanup the first started.
        return
    _stopping = True
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While open, SIGTERM raises :class:`Terminated` in the main thread (elsewhere: a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _stopping
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous is not _raise_terminated:  # the outermost: SIGTERM means a new stop again
            _stopping = False


@contextmanager
def clean_stop(what: str = "") -> Iterator[None]:
    """Around a whole command: SIGTERM raises like Ctrl-C; a stop that reaches here (after the
    cleanup on its way) is one line on stderr and ``sys.exit`` with the signal's code."""
    try:
        with sigterm_raises():
            yield
    except KeyboardInterrupt as interrupt:
        text = str(interrupt) or f"interrupted ({getattr(interrupt, 'signal_name', 'Ctrl-C')})"
        print(f"{text}{f'; {what}' if what and what not in text else ''}", file=sys.stderr, flush=True)
        sys.exit(interrupt_exit_code(interrupt))
