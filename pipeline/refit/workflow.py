"""Refit: a published bundle plus new weights -> a new, verified bundle with the same engines.

Order matters here as in the loader. Everything that can refuse the request is checked on the
CPU before any GPU work starts: the bundle is intact and trusted, it holds refittable TensorRT
engines, this checkout's config rebuilds its exact architecture, and the new weights fit that
architecture name for name and shape for shape. Only then are the engines refitted, reloaded
under the bundle's runtime policy, verified against eager PyTorch with the new weights, and
published as a new bundle whose manifest names its parent.
"""

from __future__ import annotations

import datetime
import re
import shlex
import shutil
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

import pipeline
from pipeline.backends import get_backend
from pipeline.backends.base import Backend, RefitRequest
from pipeline.bundle.store import BundleStore
from pipeline.config import compose, parse, resolve
from pipeline.config.schema import PipelineConfig, Precision, RuntimeConfig
from pipeline.console import StageClock, console
from pipeline.environment import host_environment
from pipeline.errors import ConfigError, NotRefittableError, VerificationError
from pipeline.models import state_dict_digest
from pipeline.models.weights import load_weights, read_state_dict
from pipeline.runtime.base import DirectoryFiles, FileSource
from pipeline.runtime.format import (
    Manifest,
    bundle_dir_name,
    bundle_id,
    config_identity,
    describe_outputs,
    read_manifest,
)
from pipeline.runtime.loaded import LoadedModel
from pipeline.runtime.loader import (
    check_host,
    default_device,
    input_specs,
    open_bundle,
    runtime_kind,
    saved_artifact,
)
from pipeline.runtime.policy import PolicyReport
from pipeline.runtime.trust import TrustPolicy
from pipeline.stages.build import BuiltModel, instantiate_model, prepare_model
from pipeline.stages.package import PublishedBundle, package_bundle
from pipeline.stages.verify import VerifiedModel, verify_model

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
    root, manifest, parent_files = open_bundle(bundle, trust)
    check_refittable(manifest, source)
    config = rebuild_config(manifest)
    clock = StageClock()
    with clock.stage(RefitStep.weights, source):
        model = _model_with_new_weights(config, source)
    new_sha256 = state_dict_digest(model)
    if new_sha256 == manifest.weights.get("sha256"):
        raise ConfigError(f"weights={source}: identical to the bundle's own weights; nothing to refit")

    backend = backend_for_manifest(manifest)
    device = default_device(manifest)
    built = prepare_model(model, config, device, weights_sha256=new_sha256)
    bid = bundle_id(
        {**config_identity(manifest.config), "refit_from": manifest.bundle_id},
        backend.environment(),
        new_sha256,
    )
    store = BundleStore(artifacts_dir)
    with store.lock(bid):
        existing = store.find(bid)
        if existing is not None and not force:
            console.print(f"[dim]- refit: bundle {bid} was made from these weights (force=true redoes it)[/]")
            return RefitResult(
                parent=root, bundle=PublishedBundle(existing, read_manifest(existing), reused=True)
            )
        staging = store.staging_dir(bid)
        try:
            result = _refit_into(
                staging, root, parent_files, manifest, config, source, backend, built, store, bid, clock
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    result.seconds = dict(clock.seconds)
    return result


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


def _refit_into(
    staging: Path,
    parent_root: Path,
    parent_files: FileSource,
    parent: Manifest,
    config: PipelineConfig,
    source: str,
    backend: Backend,
    built: BuiltModel,
    store: BundleStore,
    bid: str,
    clock: StageClock,
) -> RefitResult:
    specs = input_specs(parent)
    with clock.stage(RefitStep.refit, f"{parent.engine_count} engines"):
        refit = backend.refit(
            RefitRequest(
                artifact=saved_artifact(parent),
                files=parent_files,  # the bytes verified by open_bundle, not a second read
                model=built.eager,
                example_inputs=built.trace_inputs,
                specs=specs,
                target=staging,
                device=built.device,
            )
        )
    console.print("  " + ", ".join(f"{step} {seconds:.1f}s" for step, seconds in refit.seconds.items()))
    policy = RuntimeConfig(**parent.runtime["policy"])
    with clock.stage(RefitStep.reload, f"runtime={policy.name}"):
        loaded = LoadedModel(
            module=backend.load(refit.artifact, DirectoryFiles(staging), built.device),
            backend=backend,
            specs=specs,
            precision=Precision(parent.precision),
            device=built.device,
            policy=policy,
            expected_engines=parent.engine_count,
        )
    with clock.stage(RefitStep.verify):
        verified = verify_model(built, loaded, config)
    console.print(f"verification: {verified.report.summary()}")
    if not verified.report.passed:
        raise VerificationError(
            f"refitted engines do not match eager PyTorch with the new weights, nothing published: "
            f"{verified.report.summary()}"
        )
    report = loaded.policy_report
    del loaded
    with clock.stage(RefitStep.package):
        manifest = replace(
            parent,
            pipeline_version=pipeline.__version__,
            bundle_id=bid,
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            environment={**host_environment(), **backend.environment()},
            runtime=report.manifest_record(),
            outputs=describe_outputs(verified.golden_outputs, verified.output_names),
            verification=verified.report.to_dict(),
            weights={
                "source": "refit",
                "name_or_path": source,
                "sha256": built.weights_sha256,
                "refit_from": {
                    "bundle_id": parent.bundle_id,
                    "weights_sha256": parent.weights.get("sha256"),
                },
            },
            timings={**clock.seconds, **{f"refit.{k}": v for k, v in refit.seconds.items()}},
            bench={},
            engines=[record.to_dict() for record in refit.artifact.engines],
            files=[],
        )
        published = package_bundle(
            store,
            staging,
            bundle_dir_name(parent.model_name, parent.precision, policy.name, parent.backend, bid),
            manifest,
            OmegaConf.to_yaml(parent.config),
            specs,
            verified.golden_sets(built),
        )
    return RefitResult(
        parent=parent_root, bundle=published, engines_refitted=refit.engines, policy=report, verified=verified
    )
