"""The steps of a build and of a refit (see :mod:`pipeline.stages.protocol`).

Reload, verify and package (with the part of the manifest that every bundle's steps decide)
are shared by both; compile, serialize and bench are the build's, the refit of engines is the
refit's own (:mod:`pipeline.refit.workflow`).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from omegaconf import OmegaConf

import pipeline
from pipeline.backends.base import CompiledModel
from pipeline.config.schema import PipelineConfig, RuntimeConfig, Stage
from pipeline.console import console, summary_table
from pipeline.errors import VerificationError
from pipeline.runtime.format import (
    CALIBRATION_NAME,
    RUNTIME_CACHE_NAME,
    Manifest,
    bundle_dir_name,
    describe_outputs,
)
from pipeline.runtime.loaded import LoadedModel
from pipeline.runtime.rtx_runner import cache_key
from pipeline.stages.bench import BenchReport, FreshModel, bench_model, report_rows
from pipeline.stages.compile import CompileCache, compile_model
from pipeline.stages.package import PublishedBundle, package_bundle
from pipeline.stages.protocol import StepDefaults, Work, need
from pipeline.stages.reload import reload_model
from pipeline.stages.serialize import SerializedModel, serialize_model
from pipeline.stages.verify import VerifiedModel, verify_model


@dataclass
class CompileStep:
    """Compile the eager model, or reuse this process's compile of the same engines."""

    cache: CompileCache
    name = Stage.compile
    requires = ("built",)
    produces = "compiled"

    def detail(self, work: Work) -> str:
        return work.backend.kind.value

    def reuse(self, work: Work) -> tuple[CompiledModel, str] | None:
        cached = None if work.config.force else self.cache.get(self._key(work))
        if cached is None:
            return None
        # An earlier run may have timed other policies on these engines: start from the default.
        work.backend.executor(cached.compiled.module).configure(RuntimeConfig())
        work.extra_timings[Stage.compile.value] = cached.seconds
        return cached.compiled, "the same engines were compiled earlier in this process"

    def run(self, work: Work) -> CompiledModel:
        self.cache.clear()  # free the previous engines before building new ones
        start = time.perf_counter()
        compiled = compile_model(work.backend, need(work.built, "built"), work.config)
        seconds = time.perf_counter() - start
        # The manifest records this figure, so a later run reusing the compile records the same.
        work.extra_timings[Stage.compile.value] = seconds
        self.cache.put(self._key(work), compiled, seconds)
        return compiled

    @staticmethod
    def _key(work: Work) -> str:
        return CompileCache.key(work.resolved, need(work.built, "built").weights_sha256)


@dataclass
class SerializeStep(StepDefaults):
    """Write the compiled model into the staging directory."""

    name = Stage.serialize
    requires = ("compiled",)
    produces = "serialized"

    def run(self, work: Work) -> SerializedModel:
        compiled = need(work.compiled, "compiled")
        return serialize_model(work.backend, compiled, need(work.staging, "staging"), work.specs)


def load_serialized(work: Work, policy: RuntimeConfig) -> LoadedModel:
    """The serialized model loaded back as deployment hosts load it, under ``policy``."""
    engines = work.compiled.engine_count if work.compiled is not None else work.expected_engines
    serialized = need(work.serialized, "serialized")
    return reload_model(work.backend, serialized, work.specs, work.precision, work.device, policy, engines)


@dataclass
class ReloadStep(StepDefaults):
    """Load the written model back exactly as deployment hosts will, its policy applied."""

    name: Enum = Stage.reload
    requires = ("serialized",)
    produces = "loaded"

    def detail(self, work: Work) -> str:
        return f"runtime={work.policy.name}"

    def run(self, work: Work) -> LoadedModel:
        loaded = load_serialized(work, work.policy)
        work.policy_report = loaded.policy_report
        return loaded


@dataclass
class VerifyStep(StepDefaults):
    """Compare the reloaded model with eager PyTorch; a failed check fails the step (✗).

    ``failure`` words the error for the flow's user, from the config and the verdict.
    """

    failure: Callable[[PipelineConfig, str], str]
    name: Enum = Stage.verify
    requires = ("built", "loaded")
    produces = "verified"

    def run(self, work: Work) -> VerifiedModel:
        verified = verify_model(need(work.built, "built"), need(work.loaded, "loaded"), work.config)
        if verified.report.passed:
            work.runtime_cache = ship_runtime_cache(work, need(work.loaded, "loaded"))
        # Later steps load their own copies (bench) or none: free this one's engines now.
        work.loaded = None
        if not verified.report.passed:
            raise VerificationError(self.failure(work.config, verified.report.summary()))
        console.print(f"verification: {verified.report.summary()}")
        return verified


def ship_runtime_cache(work: Work, loaded: LoadedModel) -> dict[str, Any]:
    """Write the loaded model's runtime cache into the bundle (TensorRT-RTX through the own
    runner), after every golden and random input set ran: the manifest's ``runtime_cache`` entry,
    empty when there is none. Later loads of this build (bench) use it too."""
    if loaded.closed or not (data := loaded.executor.cache_bytes()):
        return {}
    serialized = need(work.serialized, "serialized")
    target = serialized.root / RUNTIME_CACHE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    key = cache_key(work.environment)
    serialized.artifact.runtime_cache, serialized.artifact.runtime_cache_key = RUNTIME_CACHE_NAME, key
    return {"file": RUNTIME_CACHE_NAME, "key": key}


@dataclass
class BenchStep(StepDefaults):
    """Time the loaded model (and extra policies) against the configured baselines."""

    name = Stage.bench
    requires = ("built", "compiled", "serialized")
    produces = "bench"

    def detail(self, work: Work) -> str:
        return f"{work.config.bench.iterations} calls per variant"

    def run(self, work: Work) -> BenchReport:
        work.loaded = None  # measure what the bench loads, not what reload left behind
        built, compiled = need(work.built, "built"), need(work.compiled, "compiled")
        report = bench_model(
            lambda policy: load_serialized(work, policy),
            work.policy,
            built.golden_inputs,
            work.config.bench,
            eager=built.eager,
            fresh=FreshModel(compiled.module, work.backend),
            shape_inputs=built.shape_inputs,
        )
        console.print(summary_table(report_rows(report), title="bench"))
        return report


#: Manifest fields that :class:`PackageStep` decides for every bundle, whatever made it.
COMMON_FIELDS = (
    "pipeline_version",
    "bundle_id",
    "created_at",
    "environment",
    "model_file",
    "runtime",
    "outputs",
    "verification",
    "engines",
    "runtime_cache",
    "files",
)


def common_manifest_fields(work: Work) -> dict[str, Any]:
    """The manifest fields every bundle fills in the same way, from the run's steps."""
    verified, serialized = need(work.verified, "verified"), need(work.serialized, "serialized")
    return {
        "pipeline_version": pipeline.__version__,
        "bundle_id": work.bundle_id,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "environment": work.environment,
        "model_file": serialized.artifact.model_file,
        "runtime": need(work.policy_report, "policy_report").manifest_record(),
        "outputs": describe_outputs(verified.golden_outputs, verified.output_names),
        "verification": verified.report.to_dict(),
        "engines": [record.to_dict() for record in serialized.artifact.engines],
        "runtime_cache": dict(work.runtime_cache),
        "files": [],
    }


def step_timings(work: Work) -> dict[str, float]:
    """Each step's seconds; an engine made in an earlier run costs what it cost then."""
    return {**work.clock.seconds, **work.extra_timings}


@dataclass
class PackageStep(StepDefaults):
    """Assemble the manifest and publish the staging directory under the bundle's name.

    ``own_fields`` gives the manifest fields that depend on how the bundle was made (the config
    and overrides of a build; the parent's fields and the new weights of a refit).
    """

    own_fields: Callable[[Work], dict[str, Any]]
    name: Enum = Stage.package
    requires = ("built", "serialized", "verified", "policy_report")
    produces = "bundle"

    def run(self, work: Work) -> PublishedBundle:
        own = self.own_fields(work)
        overlap = set(own) & set(COMMON_FIELDS)
        if overlap or {f.name for f in fields(Manifest)} != set(own) | set(COMMON_FIELDS):
            raise RuntimeError(f"manifest fields assembled twice or not at all: {sorted(overlap)}")
        manifest = Manifest(**own, **common_manifest_fields(work))
        config = work.config
        name = bundle_dir_name(
            config.model.name, work.precision.value, work.policy.name, work.backend.kind.value, work.bundle_id
        )
        verified = need(work.verified, "verified")
        calibration = need(work.built, "built").calibration
        if calibration is not None:  # listed and hashed in the manifest like every other file
            (need(work.staging, "staging") / CALIBRATION_NAME).write_text(
                calibration.to_json(), encoding="utf-8"
            )
        return package_bundle(
            work.store,
            need(work.staging, "staging"),
            name,
            manifest,
            OmegaConf.to_yaml(work.resolved),
            work.specs,
            verified.golden_sets(need(work.built, "built")),
        )
