"""What ``python -m pipeline.refit`` does once Hydra has composed ``conf/refit.yaml``."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.cli import fail
from pipeline.config import resolve_refit
from pipeline.console import console, summary_table
from pipeline.errors import PipelineError
from pipeline.refit.workflow import RefitResult, refit_bundle

USAGE = "usage: python -m pipeline.refit bundle=PATH weights=SOURCE [artifacts_dir=DIR] [force=true]"


def run(cfg: DictConfig) -> None:
    """Refit and publish; on failure print one line and exit with the error's code."""
    try:
        config = resolve_refit(cfg)
        result = refit_bundle(
            config.bundle, config.weights, artifacts_dir=config.artifacts_dir, force=config.force
        )
    except PipelineError as error:
        fail(error)
    print_summary(result)


def print_summary(result: RefitResult) -> None:
    """The end-of-refit table, then the ``bundle:`` line scripts read."""
    manifest = result.bundle.manifest
    refit_from = manifest.weights.get("refit_from", {})
    rows = [(f"{step} (s)", f"{seconds:.2f}") for step, seconds in result.seconds.items()]
    rows += [
        ("parent", f"{refit_from.get('bundle_id')} ({result.parent})"),
        ("weights", f"{manifest.weights.get('name_or_path')} (sha256 {manifest.weights.get('sha256')})"),
    ]
    if result.policy is not None:
        rows.append(("engines refitted", str(result.engines_refitted)))
        state = "applied" if result.policy.applied else f"NOT applied: {result.policy.reason}"
        rows.append(("runtime", f"{result.policy.policy.name} ({state})"))
    if result.verified is not None:
        rows.append(("verdict", result.verified.report.summary()))
    rows.append(("bundle", f"{result.bundle.path}{' (reused)' if result.bundle.reused else ''}"))
    console.print(summary_table(rows, title="refit summary"))
    print(f"bundle: {result.bundle.path}")
