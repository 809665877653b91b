"""The stage protocol and the one declaration of what an engine and a bundle are."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.backends import get_backend
from pipeline.bundle.store import BundleStore
from pipeline.config import BackendKind, PipelineConfig, Stage, compose, config_dict, resolve
from pipeline.config.schema import IDENTITY_KEY, STAGE_NEEDS, Identity
from pipeline.identity import config_identity, engine_key
from pipeline.refit.workflow import RefitEnginesStep, refit_steps
from pipeline.runner import build_steps
from pipeline.stages.protocol import StepStatus, Work, run_steps
from pipeline.stages.steps import PackageStep, ReloadStep, VerifyStep
from tests.helpers import sample_manifest


def test_schema_marks_every_top_level_field_with_what_it_decides_when_declared() -> None:
    marks = {item.name: item.metadata.get(IDENTITY_KEY) for item in fields(PipelineConfig)}
    assert all(isinstance(mark, Identity) for mark in marks.values()), marks
    assert [name for name, mark in marks.items() if mark is Identity.engine] == [
        "model",
        "precision",
        "backend",
        "compile",
        "calibration",
    ]


def test_engine_key_and_bundle_identity_follow_the_marks_when_sections_change() -> None:
    base = config_dict(resolve(compose(["model=tiny_cnn"])))
    policy = config_dict(resolve(compose(["model=tiny_cnn", "runtime=preallocated"])))
    engines = config_dict(resolve(compose(["model=tiny_cnn", "compile.min_block_size=2"])))
    moved = config_dict(resolve(compose(["model=tiny_cnn", "artifacts_dir=/elsewhere", "force=true"])))
    assert engine_key(policy, "w") == engine_key(base, "w") != engine_key(engines, "w")
    assert config_identity(policy, benched=False) != config_identity(base, benched=False)
    assert config_identity(moved, benched=False) == config_identity(base, benched=False)
    assert "bench" in config_identity(base, benched=True) and "bench" not in config_identity(
        base, benched=False
    )


def test_build_steps_run_in_stage_order_when_stages_are_listed_out_of_order() -> None:
    stages = [Stage.package, Stage.verify, Stage.build, Stage.reload, Stage.compile, Stage.serialize]
    assert [step.name for step in build_steps(stages)] == [s for s in Stage if s is not Stage.bench]


def test_each_build_step_requires_only_what_the_stages_it_needs_produce_when_wired() -> None:
    steps = {step.name: step for step in build_steps(list(Stage))}
    produced_by = {step.produces: stage for stage, step in steps.items()}
    for stage, step in steps.items():
        needed, closure = STAGE_NEEDS.get(stage), set()
        while needed is not None:
            closure.add(needed)
            needed = STAGE_NEEDS.get(needed)
        assert {produced_by[name] for name in step.requires if name in produced_by} <= closure, stage


def test_refit_shares_reload_verify_and_package_with_the_build_when_listed() -> None:
    refit = refit_steps(RefitEnginesStep(sample_manifest(), parent_files=None), lambda work: {})  # type: ignore[arg-type]
    build = build_steps(list(Stage))
    shared = (ReloadStep, VerifyStep, PackageStep)
    assert [type(step) for step in refit[1:]] == list(shared)
    assert [type(step) for step in build if isinstance(step, shared)] == list(shared)


class Probe(Enum):
    late = "late"


class NeedsVerified:
    name = Probe.late
    requires = ("verified",)
    produces = "bench"
    releases: tuple[str, ...] = ()

    def detail(self, work: Work) -> str:
        return ""

    def reuse(self, work: Work) -> None:
        return None

    def run(self, work: Work) -> Any:
        raise AssertionError("ran without what it requires")


def cpu_work(tmp_path: Path) -> Work:
    """The shared state of a tiny_cnn build on the CPU, before any step ran."""
    config = resolve(compose(["model=tiny_cnn"]))
    return Work(
        config=config,
        resolved=config_dict(config),
        backend=get_backend(BackendKind.export),
        device=torch.device("cpu"),
        store=BundleStore(tmp_path),
        policy=config.runtime,
        specs=config.model.inputs,
        precision=config.precision,
    )


def test_run_steps_refuses_a_step_when_no_earlier_step_produced_what_it_requires(tmp_path: Path) -> None:
    work = cpu_work(tmp_path)
    with pytest.raises(RuntimeError, match="requires verified"):
        run_steps([NeedsVerified()], work)
    assert work.records == []


def test_run_pipeline_records_each_step_with_status_and_time_when_run(tmp_path: Path) -> None:
    from tests.helpers import run

    result = run(tmp_path, "model=tiny_cnn")
    assert [(r.name, r.status) for r in result.steps] == [
        (stage.value, StepStatus.done) for stage in Stage if stage is not Stage.bench
    ]
    assert all(r.seconds >= 0 for r in result.steps)


class FailsAndReleases:
    name = Probe.late
    requires: tuple[str, ...] = ()
    produces = "bench"
    releases = ("loaded",)

    def detail(self, work: Work) -> str:
        return ""

    def reuse(self, work: Work) -> None:
        return None

    def run(self, work: Work) -> Any:
        raise RuntimeError("the step failed")


def test_run_steps_drops_what_a_step_releases_when_the_step_fails(tmp_path: Path) -> None:
    work = cpu_work(tmp_path)
    work.loaded = object()  # type: ignore[assignment]  # a reloaded model holding engines
    with pytest.raises(RuntimeError, match="the step failed"):
        run_steps([FailsAndReleases()], work)
    assert work.loaded is None and [r.status for r in work.records] == [StepStatus.failed]


def test_package_places_the_runtime_cache_the_verify_step_produced_when_the_model_has_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.runtime.executor import NoEngines
    from pipeline.runtime.format import RUNTIME_CACHE_NAME, read_manifest
    from pipeline.runtime.rtx_runner import cache_key
    from tests.helpers import run

    monkeypatch.setattr(NoEngines, "cache_bytes", lambda self: b"compiled kernels")
    result = run(tmp_path, "model=tiny_cnn")
    assert result.bundle is not None and result.verified is not None
    assert (
        result.verified.runtime_cache is not None
        and result.verified.runtime_cache.data == b"compiled kernels"
    )
    assert (result.bundle.path / RUNTIME_CACHE_NAME).read_bytes() == b"compiled kernels"
    manifest = read_manifest(result.bundle.path)
    assert manifest.runtime_cache == {"file": RUNTIME_CACHE_NAME, "key": cache_key(manifest.environment)}
    assert RUNTIME_CACHE_NAME in {entry.path for entry in manifest.files}
