"""Runs the configured stages in order, handing each one's typed result to the next."""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

import pipeline
from pipeline.backends import BackendChoice, CompiledModel, PolicyReport, select_backend
from pipeline.bundle.store import BundleStore
from pipeline.config import config_dict
from pipeline.config.schema import PipelineConfig, RuntimeConfig, Stage
from pipeline.console import StageClock, console, summary_table
from pipeline.environment import host_environment
from pipeline.errors import PipelineError, StageFailure, StageInterrupted, VerificationError
from pipeline.failures import failure_hint
from pipeline.runtime.format import (
    FORMAT_VERSION,
    Manifest,
    bundle_dir_name,
    bundle_id,
    config_identity,
    describe_outputs,
    read_manifest,
)
from pipeline.stages.bench import BenchReport, FreshModel, bench_model, report_rows
from pipeline.stages.build import BuiltModel, build_model
from pipeline.stages.compile import COMPILE_CACHE, CompileCache, compile_model
from pipeline.stages.package import PublishedBundle, package_bundle
from pipeline.stages.reload import reload_model
from pipeline.stages.serialize import serialize_model
from pipeline.stages.verify import VerifiedModel, verify_model


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

    @property
    def passed(self) -> bool:
        """False only when verification ran and failed."""
        return self.verified is None or self.verified.report.passed


def run_pipeline(config: PipelineConfig, overrides: list[str] | None = None) -> RunResult:
    """Run ``config.stages``; raises VerificationError (nothing published) on a failed check.

    Any other exception inside a stage comes out as :class:`StageFailure` (stage, model, the
    cause's first line, a hint where one is known; the original chained). Nothing is published.
    Ctrl-C comes out as :class:`StageInterrupted`, a ``KeyboardInterrupt`` naming the stage.
    """
    clock = StageClock()
    try:
        return _run_stages(config, overrides, clock)
    except PipelineError:
        raise
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, StageInterrupted):
            raise
        raise StageInterrupted(clock.failed or "setup") from interrupt
    except Exception as error:
        stage = clock.failed or "setup"
        raise StageFailure(stage, config.model.name, error, failure_hint(error)) from error


def _run_stages(config: PipelineConfig, overrides: list[str] | None, clock: StageClock) -> RunResult:
    choice = select_backend(config.backend.kind, config.backend.device)
    choice.backend.check_config(config)
    console.print(f"backend: [bold]{choice.backend.kind.value}[/] on {choice.device} ({choice.reason})")
    result = RunResult(config=config, backend=choice.backend.kind.value, device=str(choice.device))
    with clock.stage(Stage.build, config.model.name):
        built = build_model(config, choice.device)
    result.seconds = clock.seconds
    if Stage.compile not in config.stages:
        return result

    store = BundleStore(config.artifacts_dir)
    backend_environment = choice.backend.environment()
    environment = {**host_environment(), **backend_environment}
    bid = bundle_id(bundle_identity(config), backend_environment, built.weights_sha256)
    with store.lock(bid):
        existing = store.find(bid)
        if existing is not None and Stage.package in config.stages and not config.force:
            clock.skipped(Stage.compile, f"bundle {bid} already built (force=true rebuilds)")
            result.bundle = PublishedBundle(existing, read_manifest(existing), reused=True)
            return result
        staging = store.staging_dir(bid)
        try:
            _build_bundle(
                config, overrides or [], choice, built, store, staging, bid, environment, clock, result
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def bundle_identity(config: PipelineConfig) -> dict[str, object]:
    """What decides a bundle's content, for its id.

    A bundle built with the bench stage carries its timings in the signed manifest, so it is a
    different bundle from one built without (and from one benched with other settings): it gets
    its own id instead of replacing a published bundle, whose packed ``.tar`` would then no
    longer match the directory of the same id.
    """
    resolved = config_dict(config)
    identity = config_identity(resolved)
    if Stage.bench in config.stages:
        identity["bench"] = resolved["bench"]
    return identity


def _build_bundle(
    config: PipelineConfig,
    overrides: list[str],
    choice: BackendChoice,
    built: BuiltModel,
    store: BundleStore,
    staging: Path,
    bid: str,
    environment: dict[str, str],
    clock: StageClock,
    result: RunResult,
) -> None:
    backend = choice.backend
    cache_key = CompileCache.key(config_dict(config), built.weights_sha256)
    cached = COMPILE_CACHE.get(cache_key)
    if cached is not None and not config.force:
        clock.skipped(Stage.compile, "the same engines were compiled earlier in this process")
        compiled, compile_seconds = cached.compiled, cached.seconds
        # An earlier run may have timed other policies on these engines: start from the default.
        backend.apply_policy(compiled.module, RuntimeConfig())
    else:
        COMPILE_CACHE.clear()  # free the previous engines before building new ones
        with clock.stage(Stage.compile, backend.kind.value):
            compiled = compile_model(backend, built, config)
        compile_seconds = clock.seconds[Stage.compile.value]
        COMPILE_CACHE.put(cache_key, compiled, compile_seconds)
    result.compiled = compiled
    if Stage.serialize not in config.stages:
        return
    with clock.stage(Stage.serialize):
        serialized = serialize_model(backend, compiled, staging, config.model.inputs)
    if Stage.reload not in config.stages:
        return
    with clock.stage(Stage.reload, f"runtime={config.runtime.name}"):
        loaded = reload_model(backend, serialized, compiled, config, choice.device)
    result.policy = policy_report = loaded.policy_report
    if Stage.verify not in config.stages:
        return
    with clock.stage(Stage.verify):
        verified = verify_model(built, loaded, config)
        result.verified = verified
        if not verified.report.passed:  # inside the stage: a failed check is a failed stage (✗)
            raise VerificationError(
                f"verification failed, nothing published: {verified.report.summary()}; "
                f"hint: {verification_hint(config)}"
            )
    console.print(f"verification: {verified.report.summary()}")
    del loaded  # the bench stage loads its own copies; free this one's engines first
    if Stage.bench in config.stages:
        with clock.stage(Stage.bench, f"{config.bench.iterations} calls per variant"):
            result.bench = bench_model(
                lambda policy: reload_model(backend, serialized, compiled, config, choice.device, policy),
                config.runtime,
                built.golden_inputs,
                config.bench,
                eager=built.eager,
                fresh=FreshModel(compiled.module, backend),
                shape_inputs=built.shape_inputs,
            )
        console.print(summary_table(report_rows(result.bench), title="bench"))
    if Stage.package not in config.stages:
        return
    with clock.stage(Stage.package):
        resolved = config_dict(config)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            pipeline_version=pipeline.__version__,
            bundle_id=bid,
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            backend=backend.kind.value,
            device=str(choice.device),
            precision=config.precision.value,
            model_name=config.model.name,
            model_file=serialized.artifact.model_file,
            environment=environment,
            config=resolved,
            overrides=overrides,
            compile_settings=resolved["compile"],
            runtime=policy_report.manifest_record(),
            inputs=resolved["model"]["inputs"],
            outputs=describe_outputs(verified.golden_outputs, verified.output_names),
            verification=verified.report.to_dict(),
            weights={**resolved["model"]["weights"], "sha256": built.weights_sha256},
            engine_count=compiled.engine_count,
            engines=[record.to_dict() for record in serialized.artifact.engines],
            # A compile reused from earlier in this process cost what it cost then.
            timings={**clock.seconds, Stage.compile.value: compile_seconds},
            bench=result.bench.to_dict() if result.bench is not None else {},
        )
        result.bundle = package_bundle(
            store,
            staging,
            bundle_dir_name(
                config.model.name, config.precision.value, config.runtime.name, backend.kind.value, bid
            ),
            manifest,
            OmegaConf.to_yaml(resolved),
            config.model.inputs,
            verified.golden_sets(built),
        )


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
