"""What ``python -m pipeline`` does once Hydra has composed the config."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig
from rich.markup import escape

from pipeline.config import compose, resolve
from pipeline.config.loading import CONFIG_NAME
from pipeline.console import console
from pipeline.errors import (
    ConfigError,
    PipelineError,
    StageFailure,
    StageInterrupted,
    StorageError,
    first_line,
)
from pipeline.failures import held_torch_logs, write_failure_log, write_interrupt_log, write_torch_log
from pipeline.runner import RunResult, print_summary, run_pipeline
from pipeline.sweep import JobOutcome


@dataclass
class JobContext:
    """Where and how Hydra runs this job (filled in by ``pipeline/__main__.py``)."""

    overrides: list[str]
    output_dir: Path
    original_cwd: Path
    job: str = "0"
    multirun: bool = False


def fail(error: PipelineError) -> NoReturn:
    """Print the error's one line and exit with its code (2: config, 1: everything else)."""
    # Messages quote lists and usage lines in brackets, which rich would take for markup.
    console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
    sys.exit(error.exit_code)


def explain(failure: StageFailure, log: Path | None) -> NoReturn:
    """Print a failed stage as a short block (the traceback is in ``log``; None: it could not be
    written and went to stderr above) and exit 1."""
    lines = [
        f"[red]error:[/] {escape(failure.stage)} failed for model {escape(failure.model)}",
        f"  cause: {escape(first_line(failure.cause))}",
    ]
    if failure.hint:
        lines.append(f"  hint: {escape(failure.hint)}")
    where = escape(str(log)) if log is not None else "above (its log file could not be written)"
    lines.append(f"  full traceback: {where}")
    console.print("\n".join(lines), soft_wrap=True)
    sys.exit(failure.exit_code)


def precheck(
    argv: Sequence[str],
    config_name: str = CONFIG_NAME,
    convert: Callable[[DictConfig], object] = resolve,
    usage: str = "",
) -> None:
    """Compose and convert the command line before Hydra runs, so bad configs exit 2 in one line.

    ``convert`` turns the composed ``conf/<config_name>.yaml`` into its schema; ``usage`` is
    appended to configuration errors. ``--config-dir`` (a user's own YAML files) is honoured;
    sweeps (``-m``) and Hydra's other flags are left to Hydra.
    """
    config_dirs, arguments = split_config_dirs(argv)
    if any(arg.startswith("-") for arg in arguments):
        # A sweep or Hydra's own flags: only the one directory every job writes under is checked.
        given = [arg.split("=", 1)[1] for arg in arguments if arg.startswith("artifacts_dir=")]
        if given and not any(char in given[-1] for char in ",*[("):
            try:
                check_writable_directory(Path(given[-1]), "artifacts_dir")
            except PipelineError as error:
                fail(error)
        return
    overrides = [arg for arg in arguments if not arg.lstrip("+~").startswith("hydra")]
    try:
        config = convert(compose(overrides, config_name, config_dirs))
        artifacts = getattr(config, "artifacts_dir", None)
        if isinstance(artifacts, str):
            check_writable_directory(Path(artifacts), "artifacts_dir")
    except ConfigError as error:
        fail(ConfigError(f"{error} ({usage})") if usage else error)
    except PipelineError as error:
        fail(error)


def check_writable_directory(path: Path, setting: str) -> None:
    """Refuse, in one line, a ``setting`` (``artifacts_dir``) that names a file, a directory that
    cannot be created, or one that cannot be written (read-only, full): before Hydra or any stage
    writes there."""
    if path.exists() and not path.is_dir():
        raise StorageError(f"{setting}={path}: a file is there, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"{setting}={path}: cannot create it ({exc.strerror or exc})") from None
    try:
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise StorageError(f"{setting}={path}: cannot write there ({exc.strerror or exc})") from None


CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def split_config_dirs(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv``'s ``--config-dir``/``-cd`` directories, and the arguments without them."""
    directories: list[str] = []
    rest: list[str] = []
    arguments = iter(argv)
    for arg in arguments:
        flag, equals, value = arg.partition("=")
        if flag in CONFIG_DIR_FLAGS:
            directory = value if equals else next(arguments, None)
            if directory is None:
                rest.append(arg)  # let Hydra complain about the missing value
            else:
                directories.append(directory)
        else:
            rest.append(arg)
    return directories, rest


def run(cfg: DictConfig, job: JobContext) -> None:
    """Resolve ``cfg`` and run the pipeline.

    A single run exits with the error's code on failure. A sweep job records its outcome in its
    output directory instead and returns, so that one failed job never stops the others. Torch's
    own log lines go to the run directory (``torch.log``, and ``error.log`` on a failure).
    """
    torch_lines: list[str] = []
    try:
        config = resolve(cfg)
        # Jobs of a sweep may run with another working directory (Ray workers): anchor the store.
        artifacts = Path(config.artifacts_dir)
        config = replace(
            config, artifacts_dir=str(artifacts if artifacts.is_absolute() else job.original_cwd / artifacts)
        )
        with held_torch_logs(torch_lines):
            result = run_pipeline(config, job.overrides)
    except StageFailure as failure:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # experts asked for the whole traceback
        log = write_failure_log(failure, job.output_dir, torch_lines)
        if not job.multirun:
            explain(failure, log)
        _outcome(job, error=f"{failure} (traceback: {log})").write(job.output_dir)
        return
    except PipelineError as error:
        if not job.multirun:
            fail(error)
        _outcome(job, error=str(error)).write(job.output_dir)
        return
    except StageInterrupted as interrupt:
        log = write_interrupt_log(interrupt, job.output_dir)
        if job.multirun:
            _outcome(job, error=f"{interrupt} (traceback: {log})").write(job.output_dir)
            raise  # Ctrl-C or SIGTERM stops the whole sweep
        console.print(escape(str(interrupt)), soft_wrap=True)
        sys.exit(interrupt.exit_code)
    except Exception as error:
        if not job.multirun:
            raise
        _outcome(job, error=f"{type(error).__name__}: {error}").write(job.output_dir)
        return
    print_summary(result)
    if (torch_log := write_torch_log(torch_lines, job.output_dir)) is not None:
        console.print(f"torch logged {len(torch_lines)} line(s): {escape(str(torch_log))}", soft_wrap=True)
    if job.multirun:
        _outcome(job, result=result).write(job.output_dir)


def _outcome(job: JobContext, result: RunResult | None = None, error: str = "") -> JobOutcome:
    outcome = JobOutcome(
        job=job.job, overrides=job.overrides, status="failed" if error else "ok", error=error
    )
    if result is not None:
        outcome.seconds = dict(result.seconds)
        if result.bundle is not None:
            outcome.bundle = str(result.bundle.path)
            outcome.reused = result.bundle.reused
            runtime = result.bundle.manifest.runtime
            outcome.runtime = (
                f"{runtime['policy']['name']} ({'applied' if runtime['applied'] else 'not applied'})"
            )
            outcome.verdict = "PASS" if result.bundle.manifest.verification.get("passed") else "FAIL"
    return outcome
