"""What ``python -m pipeline`` does once Hydra has composed the config."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from omegaconf import DictConfig

from pipeline.config import compose, resolve
from pipeline.console import console
from pipeline.errors import PipelineError
from pipeline.runner import print_summary, run_pipeline


def fail(error: PipelineError) -> NoReturn:
    """Print the error's one line and exit with its code (2: config, 1: everything else)."""
    console.print(f"[red]error:[/] {error}", soft_wrap=True)
    sys.exit(error.exit_code)


def precheck(argv: Sequence[str]) -> None:
    """Compose and validate the command line before Hydra runs, so bad configs exit 2 in one line.

    Sweeps (``-m``) and Hydra's own flags are left to Hydra.
    """
    if any(arg.startswith("-") for arg in argv):
        return
    overrides = [arg for arg in argv if not arg.lstrip("+~").startswith("hydra")]
    try:
        resolve(compose(overrides))
    except PipelineError as error:
        fail(error)


def run(cfg: DictConfig, overrides: list[str]) -> None:
    """Resolve ``cfg``, run the pipeline, print the summary; project errors exit cleanly."""
    try:
        result = run_pipeline(resolve(cfg), overrides)
    except PipelineError as error:
        fail(error)
    print_summary(result)
