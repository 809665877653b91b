"""Reliability checks count what they tried; the table is printed at the end of the run.

Every check tallies attempts as rejected (good) or wrongly accepted (a hole). ``make reliability``
runs this folder; the summary shows one row per check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pipeline.errors import PipelineError


@dataclass
class Tally:
    """Attempts of one check."""

    check: str
    tried: int = 0
    rejected: int = 0
    wrongly_accepted: int = 0
    # Fuzzing also generates valid inputs; accepting those is right, so they count apart.
    accepted_valid: int = 0

    def expect_rejected(
        self, attempt: Callable[[], object], mentions: str = "", untouched: Callable[[], bool] = lambda: True
    ) -> str:
        """Run ``attempt``; count it rejected if it raises the project's error (naming ``mentions``)
        and ``untouched()`` still holds afterwards (e.g. nothing was deserialized first)."""
        self.tried += 1
        try:
            attempt()
        except PipelineError as error:
            message = str(error)
            if mentions and mentions not in message:
                self.wrongly_accepted += 1
                raise AssertionError(
                    f"{self.check}: rejected without naming {mentions!r}: {message}"
                ) from error
            if not untouched():
                self.wrongly_accepted += 1
                raise AssertionError(
                    f"{self.check}: rejected only after using what it refused: {message}"
                ) from error
            self.rejected += 1
            return message
        self.wrongly_accepted += 1
        return ""

    def count(self, rejected: bool) -> None:
        """Record an attempt that had to be rejected, judged elsewhere."""
        self.tried += 1
        if rejected:
            self.rejected += 1
        else:
            self.wrongly_accepted += 1

    def count_valid(self, accepted: bool) -> None:
        """Record an attempt that had to be accepted: a refusal shows as tried in no other column."""
        self.tried += 1
        if accepted:
            self.accepted_valid += 1


TALLIES: dict[str, Tally] = {}


@pytest.fixture
def tally() -> Iterator[Callable[[str], Tally]]:
    """``tally(name)`` returns the named check's counter (shared across parametrized cases)."""

    def get(check: str) -> Tally:
        return TALLIES.setdefault(check, Tally(check))

    yield get


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLIES:
        return
    width = max(len(name) for name in TALLIES) + 2
    terminalreporter.write_sep("=", "reliability")
    header = f"{'check':<{width}}{'tried':>8}{'rejected':>10}{'wrongly accepted':>18}{'valid, accepted':>17}"
    terminalreporter.write_line(header)
    for t in TALLIES.values():
        terminalreporter.write_line(
            f"{t.check:<{width}}{t.tried:>8}{t.rejected:>10}{t.wrongly_accepted:>18}{t.accepted_valid:>17}"
        )
