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
    releases: tuple[str, ...] = ()

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
    """The serialized model loaded back as deployment hosts load it, under ``policy`` (with the
    runtime cache the verify step produced, once it has: the bundle ships it)."""
    engines = work.compiled.engine_count if work.compiled is not None else work.expected_engines
    serialized = need(work.serialized, "serialized")
    if work.verified is not None:
        serialized = serialized.with_runtime_cache(work.verified.runtime_cache)
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
        return load_serialized(work, work.policy)


@dataclass
class VerifyStep(StepDefaults):
    """Compare the reloaded model with eager PyTorch; a failed check fails the step (✗).

    ``failure`` words the error for the flow's user, from the config and the verdict.
    """

    failure: Callable[[PipelineConfig, str], str]
    name: Enum = Stage.verify
    requires = ("built", "loaded")
    produces = "verified"
    # Later steps load their own copies (bench) or none: the reloaded engines are freed after it.
    releases = ("loaded",)

    def run(self, work: Work) -> VerifiedModel:
        built, loaded = need(work.built, "built"), need(work.loaded, "loaded")
        verified = verify_model(built, loaded, work.config, cache_key(work.environment))
        if not verified.report.passed:
            raise VerificationError(self.failure(work.config, verified.report.summary()))
        console.print(f"verification: {verified.report.summary()}")
        return verified


@dataclass
class BenchStep(StepDefaults):
    """Time the loaded model (and extra policies) against the configured baselines."""

    name = Stage.bench
    # Where verify ran, the bench's loads take the runtime cache it produced, as deployments will.
    requires = ("built", "compiled", "serialized")
    produces = "bench"

    def detail(self, work: Work) -> str:
        return f"{work.config.bench.iterations} calls per variant"

    def run(self, work: Work) -> BenchReport:
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
        "runtime": verified.policy.manifest_record(),
        "outputs": describe_outputs(verified.golden_outputs, verified.output_names),
        "verification": verified.report.to_dict(),
        "engines": [record.to_dict() for record in serialized.artifact.engines],
        "runtime_cache": verified.runtime_cache.manifest_entry() if verified.runtime_cache else {},
        "files": [],
    }


def step_timings(work: Work) -> dict[str, float]:
    """Each step's seconds; an engine made in an earlier run costs what it cost then."""
    return {**work.clock.seconds, **work.extra_timings}


@dataclass
class PackageStep(StepDefaults):
    """Place the files the verify step produced (the runtime cache), assemble the manifest and
    publish the staging directory under the bundle's name.

    ``own_fields`` gives the manifest fields that depend on how the bundle was made (the config
    and overrides of a build; the parent's fields and the new weights of a refit).
    """

    own_fields: Callable[[Work], dict[str, Any]]
    name: Enum = Stage.package
    requires = ("built", "serialized", "verified")
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
        verified, staging = need(work.verified, "verified"), need(work.staging, "staging")
        if verified.runtime_cache is not None:  # listed and hashed in the manifest like every other file
            (staging / RUNTIME_CACHE_NAME).parent.mkdir(parents=True, exist_ok=True)
            (staging / RUNTIME_CACHE_NAME).write_bytes(verified.runtime_cache.data)
        calibration = need(work.built, "built").calibration
        if calibration is not None:
            (staging / CALIBRATION_NAME).write_text(calibration.to_json(), encoding="utf-8")
        return package_bundle(
            work.store,
            need(work.staging, "staging"),
            name,
            manifest,
            OmegaConf.to_yaml(work.resolved),
            work.specs,
            verified.golden_sets(need(work.built, "built")),
        )
