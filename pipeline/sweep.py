"""Sweeps (``python -m pipeline -m ...``): per-job outcomes and the end-of-sweep summary.

Jobs may run anywhere a Hydra launcher puts them (this process, submitit's local processes,
SLURM nodes, Ray workers), so each job writes ``outcome.json`` into its own Hydra output
directory instead of exiting; a failed job never stops the others. When the sweep ends,
:class:`SweepSummary` (a Hydra callback) gathers the outcomes, prints and writes
``summary.md`` in the sweep directory, and exits non-zero if any job failed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.markup import escape

from pipeline.console import console, summary_table
from pipeline.report import write_report

OUTCOME_NAME = "outcome.json"


@dataclass
class JobOutcome:
    """What one job of a sweep did."""

    job: str
    overrides: list[str]
    status: str  # "ok" or "failed"
    bundle: str = ""
    reused: bool = False
    verdict: str = ""
    runtime: str = ""
    error: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        """Write ``outcome.json`` into the job's output directory; where it cannot be written (a
        full disk), say so in one line: the sweep summary then counts the job as failed."""
        try:
            (directory / OUTCOME_NAME).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        except OSError as exc:
            print(f"job {self.job}: {OUTCOME_NAME} not written ({exc.strerror or exc})", file=sys.stderr)


def collect_outcomes(sweep_dir: Path) -> list[JobOutcome]:
    """Every job directory's outcome; a job that left none (it crashed) counts as failed."""
    outcomes = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=_job_order):
        if not (job_dir / ".hydra").is_dir():
            continue
        path = job_dir / OUTCOME_NAME
        if path.is_file():
            outcomes.append(JobOutcome(**json.loads(path.read_text(encoding="utf-8"))))
        else:
            outcomes.append(
                JobOutcome(
                    job=job_dir.name, overrides=[], status="failed", error="no outcome: the job crashed"
                )
            )
    return outcomes


def _job_order(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def summary_markdown(outcomes: list[JobOutcome]) -> str:
    """The sweep as a markdown table of bundles and verdicts."""
    lines = [
        "| job | overrides | status | runtime | verdict | bundle | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        bundle = f"{o.bundle}{' (reused)' if o.reused else ''}"
        cells = [o.job, " ".join(o.overrides), o.status, o.runtime, o.verdict, bundle, o.error]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, summarize every job; exit 1 if any failed.

    While the multirun lasts it holds the compile cache, so that jobs run one after another in
    this process (Hydra's basic launcher) compile engines they share once.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.stages.compile import COMPILE_CACHE

        COMPILE_CACHE.hold()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.stages.compile import COMPILE_CACHE

        COMPILE_CACHE.release()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        outcomes = collect_outcomes(sweep_dir)
        (sweep_dir / "summary.md").write_text(
            "# Sweep summary\n\n" + summary_markdown(outcomes), encoding="utf-8"
        )
        benchmarked = write_report(Path(str(config.artifacts_dir)))
        rows = [
            (f"job {o.job}", f"{o.status}: {' '.join(o.overrides)} -> {o.bundle or o.error}")
            for o in outcomes
        ]
        console.print(summary_table(rows, title=f"sweep summary ({sweep_dir / 'summary.md'})"))
        if benchmarked is not None:
            console.print(f"policy report: {benchmarked[0]}")
        failed = [o for o in outcomes if o.status != "ok"]
        if failed:
            for o in failed:
                overrides = escape(" ".join(o.overrides))
                console.print(f"[red]failed:[/] job {o.job} ({overrides}): {escape(o.error)}")
            # SystemExit passes through Hydra's callback guard: the sweep's exit code says it failed.
            raise SystemExit(1)
