"""Runs the configured stages in order, handing each one's typed result to the next."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.backends import BackendChoice, CompiledModel, PolicyReport, select_backend
from pipeline.bundle.store import BundleStore
from pipeline.config import config_dict
from pipeline.config.schema import BackendKind, PipelineConfig, Stage
from pipeline.console import StageClock, console, summary_table
from pipeline.environment import host_environment
from pipeline.errors import PipelineError, StageFailure, StageInterrupted, Terminated
from pipeline.failures import failure_hint
from pipeline.identity import build_environment, pipeline_bundle_id
from pipeline.quantization.precisions import (
    check_precision_host,
    check_precision_model,
    check_precision_request,
)
from pipeline.runtime.format import FORMAT_VERSION
from pipeline.stages.bench import BenchReport
from pipeline.stages.build import BuiltModel, build_model
from pipeline.stages.compile import COMPILE_CACHE
from pipeline.stages.package import PublishedBundle
from pipeline.stages.protocol import Step, StepRecord, Work, build_or_reuse, need, run_steps
from pipeline.stages.steps import (
    BenchStep,
    CompileStep,
    PackageStep,
    ReloadStep,
    SerializeStep,
    VerifyStep,
    step_timings,
)
from pipeline.stages.verify import VerifiedModel


@dataclass
class RunResult:
    """What a pipeline run did."""

    config: PipelineConfig
    backend: str
    device: str
    seconds: dict[str, float] = field(default_factory=dict)
    bundle: PublishedBundle | None = None
    verified: VerifiedModel | None = None
    policy: PolicyReport | None = None
    # The freshly compiled model, kept for in-process comparisons (tests, benchmarks).
    compiled: CompiledModel | None = None
    bench: BenchReport | None = None
    #: Each step's status and time, in the order they ran.
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """False only when verification ran and failed."""
        return self.verified is None or self.verified.report.passed


def run_pipeline(config: PipelineConfig, overrides: list[str] | None = None) -> RunResult:
    """Run ``config.stages``; raises VerificationError (nothing published) on a failed check.

    Any other exception inside a stage comes out as :class:`StageFailure` (stage, model, the
    cause's first line, a hint where one is known; the original chained). Nothing is published.
    Ctrl-C (and SIGTERM, under :func:`pipeline.signals.sigterm_raises`) comes out as
    :class:`StageInterrupted`, a ``KeyboardInterrupt`` naming the stage and the signal.
    The process's compile cache is emptied on return unless a caller keeps it
    (``COMPILE_CACHE.kept()``: a sweep, the GPU suite), so no engines stay on the device.
    """
    clock = StageClock()
    try:
        return _run_stages(config, overrides or [], clock)
    except PipelineError:
        raise
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, StageInterrupted):
            raise
        stage = clock.failed or "setup"
        raise StageInterrupted(stage, terminated=isinstance(interrupt, Terminated)) from interrupt
    except Exception as error:
        stage = clock.failed or "setup"
        raise StageFailure(stage, config.model.name, error, failure_hint(error)) from error
    finally:
        COMPILE_CACHE.release_unless_kept()


@dataclass
class BuildStep:
    """Instantiate the eager model, load its weights, make the golden inputs."""

    name = Stage.build
    requires: tuple[str, ...] = ()
    produces = "built"
    releases: tuple[str, ...] = ()

    def detail(self, work: Work) -> str:
        return work.config.model.name

    def reuse(self, work: Work) -> None:
        return None

    def run(self, work: Work) -> BuiltModel:
        return build_model(work.config, work.device)


def build_steps(stages: list[Stage]) -> list[Step]:
    """The steps of ``stages``, in :class:`Stage` order (the one place that order is set)."""
    steps: dict[Stage, Step] = {
        Stage.build: BuildStep(),
        Stage.compile: CompileStep(COMPILE_CACHE),
        Stage.serialize: SerializeStep(),
        Stage.reload: ReloadStep(),
        Stage.verify: VerifyStep(verification_failure),
        Stage.bench: BenchStep(),
        Stage.package: PackageStep(build_manifest_fields),
    }
    return [steps[stage] for stage in Stage if stage in stages]


def _run_stages(config: PipelineConfig, overrides: list[str], clock: StageClock) -> RunResult:
    check_precision_request(config)
    choice = select_backend(config.backend.kind, config.backend.device)
    choice.backend.check_config(config)
    host = choice.backend.environment(choice.device) if choice.backend.kind is BackendKind.tensorrt else {}
    note = check_precision_host(config, choice.backend.kind, host)
    if note is not None:
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"backend: [bold]{choice.backend.kind.value}[/] on {choice.device} ({choice.reason})")
    result = RunResult(config=config, backend=choice.backend.kind.value, device=str(choice.device))
    work = _work(config, overrides, choice, clock)
    first, *rest = build_steps(config.stages)
    run_steps([first], work)
    if rest and work.built is not None:
        check_precision_model(config, host, work.built.eager)
    result.seconds, result.steps = clock.seconds, work.records
    if not rest:
        return result
    backend_environment = choice.backend.environment()
    identity_environment = build_environment(work.resolved, backend_environment)
    # The manifest records the host as it is (full python version); the id reads only the minor.
    work.environment = {**identity_environment, **host_environment(), **backend_environment}
    work.bundle_id = pipeline_bundle_id(
        config, work.resolved, identity_environment, need(work.built, "built").weights_sha256
    )
    # Without the package stage nothing is published, so there is nothing to reuse either.
    rebuild = config.force or Stage.package not in config.stages
    outcome = build_or_reuse(work.store, work.bundle_id, rebuild, lambda staging: _build(work, rest, staging))
    if outcome is not None:
        clock.skipped(
            Stage.compile, f"bundle {work.bundle_id} already built, files intact (force=true rebuilds)"
        )
        result.bundle = outcome
        return result
    result.bundle, result.verified = work.bundle, work.verified
    result.policy = work.verified.policy if work.verified is not None else None
    result.compiled, result.bench = work.compiled, work.bench
    return result


def _work(config: PipelineConfig, overrides: list[str], choice: BackendChoice, clock: StageClock) -> Work:
    return Work(
        config=config,
        resolved=config_dict(config),
        backend=choice.backend,
        device=choice.device,
        store=BundleStore(config.artifacts_dir),
        policy=config.runtime,
        specs=config.model.inputs,
        precision=config.precision,
        overrides=overrides,
        clock=clock,
    )


def _build(work: Work, steps: list[Step], staging: Path) -> None:
    """Run the steps after build into ``staging`` (published by the package step, if any)."""
    work.staging = staging
    run_steps(steps, work)


def build_manifest_fields(work: Work) -> dict[str, Any]:
    """The manifest fields of a build: its config, overrides, weights, engines and timings."""
    resolved, built = work.resolved, need(work.built, "built")
    return {
        "format_version": FORMAT_VERSION,
        "backend": work.backend.kind.value,
        "device": str(work.device),
        "precision": work.precision.value,
        "model_name": work.config.model.name,
        "config": resolved,
        "overrides": work.overrides,
        "compile_settings": resolved["compile"],
        "inputs": resolved["model"]["inputs"],
        "weights": {**resolved["model"]["weights"], "sha256": built.weights_sha256},
        "engine_count": need(work.compiled, "compiled").engine_count,
        "timings": step_timings(work),
        "bench": work.bench.to_dict() if work.bench is not None else {},
    }


def verification_failure(config: PipelineConfig, verdict: str) -> str:
    """The error of a failed verification: the verdict and what to try."""
    return f"verification failed, nothing published: {verdict}; hint: {verification_hint(config)}"


def verification_hint(config: PipelineConfig) -> str:
    """What to try when the reloaded model disagrees with eager PyTorch."""
    precision = config.precision.value
    tolerance = config.verify.tolerance(config.precision)
    return (
        "a model that is not deterministic (dropout or batch statistics in train mode, random ops) "
        "never matches itself: put it in eval mode or remove the randomness; if the difference is "
        f"expected (reduced precision), widen the tolerance, e.g. verify.{precision}.atol="
        f"{tolerance.atol * 10:g} (now {tolerance.atol:g}) or verify.{precision}.min_cosine"
    )


def print_summary(result: RunResult) -> None:
    """The end-of-run table: stage times, bundle, policy and verdict."""
    rows = [(f"{stage} (s)", f"{seconds:.2f}") for stage, seconds in result.seconds.items()]
    rows.append(("backend", f"{result.backend} on {result.device}"))
    config = result.config
    rows.append(("model", f"{config.model.name} {config.precision.value}"))
    policy = result.policy
    if policy is not None:
        state = "applied" if policy.applied else f"recorded, NOT applied: {policy.reason}"
        engines = f", {policy.engines_configured} engines" if policy.engines_configured else ""
        rows.append(("runtime", f"{policy.policy.name} ({state}{engines})"))
    if result.verified is not None:
        rows.append(("verdict", result.verified.report.summary()))
    if result.bundle is not None:
        rows.append(("bundle", f"{result.bundle.path}{' (reused)' if result.bundle.reused else ''}"))
        if result.bundle.reused:
            runtime = result.bundle.manifest.runtime
            rows.append(("runtime", f"{runtime['policy']['name']} (applied: {runtime['applied']})"))
    console.print(summary_table(rows, title="pipeline summary"))
    if result.bundle is not None:
        # The one line scripts read: where the bundle is.
        print(f"bundle: {result.bundle.path}")
