"""Refit: a published bundle plus new weights -> a new, verified bundle with the same engines.

Order matters here as in the loader. Everything that can refuse the request is checked on the
CPU before any GPU work starts: the bundle is intact and trusted, it holds refittable TensorRT
engines, this checkout's config rebuilds its exact architecture, and the new weights fit that
architecture name for name and shape for shape. Only then are the engines refitted, reloaded
under the bundle's runtime policy, verified against eager PyTorch with the new weights, and
published as a new bundle whose manifest names its parent.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.backends import get_backend
from pipeline.backends.base import Backend, RefitRequest
from pipeline.bundle.store import BundleStore
from pipeline.config import compose, parse, resolve
from pipeline.config.schema import PipelineConfig, Precision
from pipeline.console import StageClock, console
from pipeline.environment import host_environment
from pipeline.errors import ConfigError, NotRefittableError
from pipeline.identity import build_environment, config_identity
from pipeline.models import state_dict_digest
from pipeline.models.weights import load_weights, read_state_dict
from pipeline.quantization.precisions import PRECISIONS
from pipeline.runtime.base import FileSource
from pipeline.runtime.format import Manifest, bundle_id
from pipeline.runtime.loader import (
    check_host,
    default_device,
    input_specs,
    open_bundle,
    recorded_policy,
    runtime_kind,
    saved_artifact,
)
from pipeline.runtime.policy import PolicyReport
from pipeline.runtime.trust import TrustPolicy
from pipeline.stages.build import instantiate_model, prepare_model
from pipeline.stages.package import PublishedBundle
from pipeline.stages.protocol import Step, StepDefaults, Work, build_or_reuse, need, run_steps
from pipeline.stages.serialize import SerializedModel
from pipeline.stages.steps import COMMON_FIELDS, PackageStep, ReloadStep, VerifyStep, step_timings
from pipeline.stages.verify import VerifiedModel

_GROUP_OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class RefitStep(str, Enum):
    """The steps of a refit, as timed and shown."""

    weights = "weights"
    refit = "refit"
    reload = "reload"
    verify = "verify"
    package = "package"


@dataclass
class RefitResult:
    """What a refit produced: the new bundle and how it was checked."""

    parent: Path
    bundle: PublishedBundle
    engines_refitted: int = 0
    policy: PolicyReport | None = None
    verified: VerifiedModel | None = None
    seconds: dict[str, float] = field(default_factory=dict)


#: Precisions whose engines hold calibrated scales (the refit refuses them before any work).
QUANTIZED_PRECISIONS = frozenset(p.value for p, spec in PRECISIONS.items() if spec.quantized)


def check_refittable(manifest: Manifest, weights: str) -> None:
    """Refuse bundles whose engines cannot take new weights, saying what to do instead."""
    rebuild = shlex.join(["python", "-m", "pipeline", *manifest.overrides])
    if manifest.backend != "tensorrt":
        raise NotRefittableError(
            f"bundle {manifest.bundle_id} was built by the {manifest.backend} backend, which has no "
            "TensorRT engines to refit; build a new bundle with the new weights instead: "
            f"{rebuild} model.weights.source=pretrained model.weights.name_or_path={shlex.quote(weights)}"
        )
    if manifest.compile_settings.get("immutable_weights", True):
        raise NotRefittableError(
            f"bundle {manifest.bundle_id} was built with compile.immutable_weights=true, so its "
            "engines hold their weights as constants and cannot be refitted; rebuild it once with "
            f"refittable engines ({rebuild} compile.immutable_weights=false) and refit that bundle"
        )
    if manifest.engine_count < 1:
        raise NotRefittableError(f"bundle {manifest.bundle_id} holds no TensorRT engines to refit")
    if manifest.precision in QUANTIZED_PRECISIONS:
        raise NotRefittableError(
            f"bundle {manifest.bundle_id} is quantized ({manifest.precision}): its scales were "
            "calibrated for its own weights, so new weights need a new calibration; build a new "
            f"bundle instead: {rebuild} model.weights.source=pretrained "
            f"model.weights.name_or_path={shlex.quote(weights)}"
        )


def rebuild_config(manifest: Manifest) -> PipelineConfig:
    """The bundle's recorded config, with its model architecture taken from this checkout.

    A bundle's config is data from elsewhere, and ``_target_`` names code to run: refit only
    instantiates the architecture that ``conf/model/<name>.yaml`` here defines, after checking
    that it is the one the bundle records.
    """
    recorded = parse(manifest.config)
    name = recorded.model.name
    if not _GROUP_OPTION.fullmatch(name):
        raise NotRefittableError(f"model.name={name!r}: not the name of a config in conf/model/")
    try:
        local = resolve(compose([f"model={name}"]))
    except ConfigError as exc:
        raise NotRefittableError(
            f"refit rebuilds the eager model from this checkout's conf/model/{name}.yaml: {exc}"
        ) from None
    difference = _first_difference(recorded.model.architecture, local.model.architecture, "")
    if difference is not None:
        key, ours, theirs = difference
        raise NotRefittableError(
            f"model.architecture{key}: the bundle records {ours!r} but conf/model/{name}.yaml here "
            f"says {theirs!r}; refit rebuilds the eager model from this checkout's config, so it "
            "must describe the bundle's architecture"
        )
    return replace(recorded, model=replace(recorded.model, architecture=local.model.architecture))


def _first_difference(ours: Any, theirs: Any, path: str) -> tuple[str, Any, Any] | None:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs), key=str):
            found = _first_difference(ours.get(key), theirs.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    return None if ours == theirs else (path, ours, theirs)


def refit_bundle(
    bundle: str | Path,
    weights: str | Path,
    *,
    artifacts_dir: str | Path = "artifacts",
    force: bool = False,
    trust: TrustPolicy | None = None,
) -> RefitResult:
    """Refit ``bundle``'s engines with ``weights`` and publish the result as a new bundle.

    ``weights``: a state-dict file, a ``.safetensors`` file or a ``save_pretrained`` directory.
    The new bundle keeps the parent's engines, runtime policy, inputs and config (the config its
    engines were built from); its golden outputs come from eager PyTorch with the new weights,
    and its manifest's ``weights`` say which weights the engines now hold: source ``refit``,
    their path and sha256, and ``refit_from`` (the parent bundle id and its weights' sha256).

    Raises :class:`ConfigError` subclasses before any GPU work when the bundle or the weights
    cannot be refitted, and :class:`VerificationError` (nothing published) when the refitted
    engines disagree with eager PyTorch.
    """
    source = str(Path(weights).expanduser().resolve())
    opened = open_bundle(bundle, trust)
    root, manifest, parent_files = opened.root, opened.manifest, opened.files
    check_refittable(manifest, source)
    config = rebuild_config(manifest)
    clock = StageClock()
    with clock.stage(RefitStep.weights, source):
        model = _model_with_new_weights(config, source)
    new_sha256 = state_dict_digest(model)
    if new_sha256 == manifest.weights.get("sha256"):
        raise ConfigError(f"weights={source}: identical to the bundle's own weights; nothing to refit")
    work = _work(manifest, config, new_sha256, artifacts_dir, clock)
    work.built = prepare_model(model, config, work.device, weights_sha256=new_sha256)
    refit = RefitEnginesStep(manifest, parent_files)
    steps = refit_steps(refit, partial(refit_manifest_fields, manifest, source))
    reused = build_or_reuse(work.store, work.bundle_id, force, partial(_refit_into, work, steps))
    if reused is not None:
        console.print(
            f"[dim]- refit: bundle {work.bundle_id} was made from these weights (force=true redoes it)[/]"
        )
        return RefitResult(parent=root, bundle=reused)
    return RefitResult(
        parent=root,
        bundle=need(work.bundle, "bundle"),
        engines_refitted=refit.engines,
        policy=work.verified.policy if work.verified is not None else None,
        verified=work.verified,
        seconds=dict(clock.seconds),
    )


def refit_steps(refit: RefitEnginesStep, manifest_fields: Callable[[Work], dict[str, Any]]) -> list[Step]:
    """A refit's steps, in order: the engines refitted, then the build's reload, verify, package."""
    return [
        refit,
        ReloadStep(name=RefitStep.reload),
        VerifyStep(_refit_failure, name=RefitStep.verify),
        PackageStep(manifest_fields, name=RefitStep.package),
    ]


def _work(
    parent: Manifest,
    config: PipelineConfig,
    weights_sha256: str,
    artifacts_dir: str | Path,
    clock: StageClock,
) -> Work:
    """The refit's shared state: the parent's backend, device, policy, inputs and the new id."""
    backend = backend_for_manifest(parent)
    backend_environment = backend.environment()
    identity_environment = build_environment(parent.config, backend_environment)
    identity = {**config_identity(parent.config, benched=False), "refit_from": parent.bundle_id}
    return Work(
        config=config,
        resolved=parent.config,
        backend=backend,
        device=default_device(parent),
        store=BundleStore(artifacts_dir),
        policy=recorded_policy(parent),
        specs=input_specs(parent),
        precision=Precision(parent.precision),
        expected_engines=parent.engine_count,
        environment={**identity_environment, **host_environment(), **backend_environment},
        bundle_id=bundle_id(identity, identity_environment, weights_sha256),
        clock=clock,
    )


def backend_for_manifest(manifest: Manifest) -> Backend:
    """The compiler backend of a bundle this host can run (the compatibility gate applies).

    The backend comes first: it imports torch_tensorrt, which loads Torch-TensorRT's full library;
    loading the runtime-only library before it would register the same operators twice.
    """
    backend = get_backend(runtime_kind(manifest))
    backend.prepare()
    check_host(manifest, backend, force=False)
    return backend


def _model_with_new_weights(config: PipelineConfig, source: str) -> nn.Module:
    """The bundle's eager model (its architecture, as first built) with ``source``'s weights."""
    try:
        model = instantiate_model(config.model)
    except (ConfigError, OSError) as exc:
        raise NotRefittableError(f"cannot rebuild the bundle's eager model here: {exc}") from None
    load_weights(model, read_state_dict(source), source)
    return model


def _refit_into(work: Work, steps: list[Step], staging: Path) -> None:
    work.staging = staging
    run_steps(steps, work)


def _refit_failure(config: PipelineConfig, verdict: str) -> str:
    return f"refitted engines do not match eager PyTorch with the new weights, nothing published: {verdict}"


@dataclass
class RefitEnginesStep(StepDefaults):
    """Write the parent's engines, refitted to the new weights, into the staging directory."""

    parent: Manifest
    parent_files: FileSource
    engines: int = 0
    name: Enum = RefitStep.refit
    requires = ("built",)
    produces = "serialized"

    def detail(self, work: Work) -> str:
        return f"{self.parent.engine_count} engines"

    def run(self, work: Work) -> SerializedModel:
        built, staging = need(work.built, "built"), need(work.staging, "staging")
        refit = work.backend.refit(
            RefitRequest(
                artifact=saved_artifact(self.parent),
                files=self.parent_files,  # the bytes verified by open_bundle, not a second read
                model=built.eager,
                example_inputs=built.trace_inputs,
                specs=work.specs,
                target=staging,
                device=built.device,
            )
        )
        console.print("  " + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in refit.seconds.items()))
        work.extra_timings.update({f"refit.{step}": seconds for step, seconds in refit.seconds.items()})
        self.engines = refit.engines
        return SerializedModel(root=staging, artifact=refit.artifact)


def refit_manifest_fields(parent: Manifest, source: str, work: Work) -> dict[str, Any]:
    """The parent's manifest fields, with the new weights (and where they came from) and timings."""
    own = {
        item.name: getattr(parent, item.name) for item in fields(Manifest) if item.name not in COMMON_FIELDS
    }
    own["weights"] = {
        "source": "refit",
        "name_or_path": source,
        "sha256": need(work.built, "built").weights_sha256,
        "refit_from": {"bundle_id": parent.bundle_id, "weights_sha256": parent.weights.get("sha256")},
    }
    own["timings"] = step_timings(work)
    own["bench"] = {}
    return own
