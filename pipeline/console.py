"""Terminal output: a spinner per stage while it runs, a summary table at the end."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from enum import Enum

from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(stderr=True, highlight=False, soft_wrap=True)


class StageClock:
    """Times stages and shows progress while each one runs."""

    def __init__(self, out: Console = console) -> None:
        self.out = out
        self.seconds: dict[str, float] = {}
        # The stage an exception left, for the error report.
        self.failed: str | None = None

    @contextmanager
    def stage(self, stage: Enum, detail: str = "") -> Iterator[None]:
        """Run the body as ``stage`` (a pipeline or refit step): spinner, then its time."""
        label = f"{stage.value}{f' ({detail})' if detail else ''}"
        start = time.perf_counter()
        try:
            with self.out.status(f"[bold]{label}[/] ..."):
                yield
        except BaseException as error:
            self.failed = stage.value
            self.seconds[stage.value] = time.perf_counter() - start
            if not isinstance(error, KeyboardInterrupt):  # Ctrl-C is reported in one line, later
                self.out.print(f"[red]✗[/] {label} failed after {self.seconds[stage.value]:.1f}s")
            raise
        self.seconds[stage.value] = time.perf_counter() - start
        self.out.print(f"[green]✓[/] {label} {self.seconds[stage.value]:.1f}s")

    def skipped(self, stage: Enum, why: str) -> None:
        """Note a stage that did not run."""
        self.out.print(f"[dim]- {stage.value}: {why}[/]")


def summary_table(rows: list[tuple[str, str]], title: str) -> Table:
    """A two-column table of labelled values, printed as they are (``[...]`` is not markup)."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, Text(value))
    return table


@contextmanager
def stderr_to_log(logger: str, out: Console = console) -> Iterator[None]:
    """Send what the block prints to ``sys.stderr`` to ``logger`` (a warning) instead of the
    terminal, while ``out`` keeps writing where it wrote: ``torch.export`` prints a failed trace's
    partial graph (dozens of lines) above the failure block; it belongs in the run's log."""
    buffer = io.StringIO()
    pinned = out.file  # resolved now, so that the progress line does not follow the redirect
    out.file = pinned
    try:
        with redirect_stderr(buffer):
            yield
    finally:
        out.file = None  # type: ignore[assignment]  # rich: back to following sys.stderr
        if text := buffer.getvalue().strip():
            logging.getLogger(logger).warning("printed to stderr:\n%s", text)
