"""Loading bundles on deployment hosts: check everything, then deserialize, then apply the policy.

Order matters: deserializing a model runs code (pickle inside the graph file, native engines),
so the manifest and every file's sha256 are checked first, then host compatibility, and only
then are the verified bytes handed to the model's runtime.

This module is what deployment code imports: it must stay light. It imports no compiler
(``torch_tensorrt``, its Python package included), nothing of the build side (config loading,
stages, model zoo), no Hydra or omegaconf.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import BundleError, ConfigError
from pipeline.runtime.archive import extract_bundle, is_archive, release_unpacked
from pipeline.runtime.base import ModelRuntime, SavedArtifact
from pipeline.runtime.compat import compatibility_problems
from pipeline.runtime.engine_graph import ENGINE_DIR, EngineRecord
from pipeline.runtime.format import (
    GOLDEN_NAME,
    OPT_SET,
    Manifest,
    VerifiedFiles,
    check_files,
    golden_sets,
    output_names,
    read_manifest_as_written,
)
from pipeline.runtime.loaded import LoadedModel, resolve_device
from pipeline.runtime.policy import RuntimeConfig, as_policy
from pipeline.runtime.tensorrt import tensorrt_unavailable_reason
from pipeline.runtime.trust import SignatureCheck, TrustPolicy, check_signature
from pipeline.runtime.types import BackendKind, DType, InputSpec, Precision, Tolerance
from pipeline.timing import Stopwatch

if TYPE_CHECKING:
    from pipeline.runtime.verification import VerificationReport


class LoadedBundle(LoadedModel):
    """A loaded bundle: call it like the model; ``manifest`` says what it is, ``load_report``
    how it was loaded. ``close()`` (or ``with``) also removes the directory an archive was
    unpacked into."""

    def __init__(self, root: Path, manifest: Manifest, **kwargs: Any) -> None:
        self.root = root
        self.manifest = manifest
        #: Seconds each step of :func:`load_bundle` took (unpack and verify, runtime, ...).
        self.load_seconds: dict[str, float] = {}
        #: The host fingerprint the bundle was checked against (of the model's device).
        self.host: dict[str, str] = {}
        #: What the signature check found (signed by which trusted key, or unsigned).
        self.signature = SignatureCheck()
        super().__init__(**kwargs)

    @property
    def load_report(self) -> dict[str, Any]:
        """What loading did: device, host fingerprint, policy and engines, seconds per step."""
        return {
            "bundle": self.manifest.bundle_id,
            "device": str(self.device),
            "host": dict(self.host),
            "signature": self.signature.describe(),
            "policy": self.policy_report.manifest_record(),
            "engines": {} if self.closed else self.executor.outcome().record(),
            "seconds": dict(self.load_seconds),
        }

    def close(self) -> None:
        """Free the engines and remove the unpacked copy of an archive (idempotent)."""
        super().close()
        release_unpacked(self.root)


@dataclass(frozen=True)
class OpenedBundle:
    """A bundle checked by :func:`open_bundle` (nothing deserialized): where its files are, its
    manifest, the verified bytes of its model files and what its signature check found."""

    root: Path
    manifest: Manifest
    files: VerifiedFiles
    signature: SignatureCheck


def open_bundle(path: str | Path, trust: TrustPolicy | None = None) -> OpenedBundle:
    """Locate (unpacking an archive safely), read and check a bundle; deserialize nothing.

    Checks, in order: the manifest parses and matches its own digest; every listed file has its
    size and sha256 and nothing unlisted is present; the signature, under the host's trust policy
    (``PIPELINE_TRUSTED_KEYS``, ``PIPELINE_REQUIRE_SIGNATURE``) unless ``trust`` is given.
    The model's files are read (and hashed) once, here. An archive's unpacked copy is removed by
    :func:`pipeline.runtime.archive.release_unpacked` (at exit at the latest).
    """
    # The host's policy first: a trust configuration that cannot be read refuses everything.
    policy = trust if trust is not None else TrustPolicy.from_environment()
    root = _as_directory(Path(path))
    try:
        manifest, manifest_bytes = read_manifest_as_written(root)
        files = check_files(root, manifest, saved_artifact(manifest).files)
        signature = check_signature(root, policy, manifest_bytes)  # over the bytes read, as signed
    except BaseException:
        release_unpacked(root)
        raise
    return OpenedBundle(root, manifest, files, signature)


def load_bundle(
    path: str | Path,
    runtime: RuntimeConfig | str | None = None,
    device: str | torch.device | None = None,
    *,
    trust: TrustPolicy | None = None,
    force: bool = False,
) -> LoadedBundle:
    """Load a bundle directory or archive (.tar, .tar.gz) and put its runtime policy back on.

    ``runtime`` overrides the recorded policy (a preset name such as ``"cudagraphs"`` or a
    :class:`RuntimeConfig`); it can be switched later with ``loaded.set_runtime(...)``.
    ``device`` pins the model to one GPU (``"cuda:1"``); the default is the current CUDA device
    for TensorRT bundles, and the device is recorded in ``loaded.load_report``.
    Raises :class:`BundleError` before deserializing anything if the bundle is not intact, not
    trusted, or built for another kind of host (``force=True`` loads it anyway: for experts).
    """
    watch = Stopwatch()
    with watch.lap("open and verify"):
        opened = open_bundle(path, trust)
    root, manifest, files = opened.root, opened.manifest, opened.files
    try:
        policy = recorded_policy(manifest) if runtime is None else runtime
        target = resolve_device(device) if device is not None else default_device(manifest)
        with watch.lap("runtime library"):
            model_runtime = runtime_for(runtime_kind(manifest))
            model_runtime.prepare()
        with watch.lap("host check"):
            host = check_host(manifest, model_runtime, force, target)
        loaded = _deserialize(root, manifest, files, model_runtime, target, policy, watch)
    except BaseException:
        release_unpacked(root)
        raise
    loaded.host = host
    loaded.signature = opened.signature
    loaded.load_seconds = watch.seconds
    return loaded


def _deserialize(
    root: Path,
    manifest: Manifest,
    files: VerifiedFiles,
    model_runtime: ModelRuntime,
    target: torch.device,
    policy: RuntimeConfig | str,
    watch: Stopwatch,
) -> LoadedBundle:
    with watch.lap("deserialize"):
        artifact = model_runtime.load(saved_artifact(manifest), files, target, as_policy(policy))
    with watch.lap("apply policy"):
        loaded = LoadedBundle(
            root=root,
            manifest=manifest,
            module=artifact.module,
            executor=artifact.executor,
            specs=input_specs(manifest),
            precision=Precision(manifest.precision),
            device=target,
            policy=policy,
            expected_engines=manifest.engine_count,
            output_names=output_names(manifest),
        )
    return loaded


def saved_artifact(manifest: Manifest) -> SavedArtifact:
    """The model files a manifest lists: the model file and each engine's record."""
    engines = [EngineRecord.from_dict(entry) for entry in manifest.engines]
    if manifest.backend == BackendKind.tensorrt.value and len(engines) != manifest.engine_count:
        raise BundleError(
            f"manifest.json: {len(engines)} engine files listed, engine_count says {manifest.engine_count}"
        )
    cache = manifest.runtime_cache
    cache_file, cache_key = cache.get("file"), cache.get("key", {})
    if cache and not (
        isinstance(cache_file, str)
        and isinstance(cache_key, dict)
        and cache_file.startswith(f"{ENGINE_DIR}/")
    ):
        raise BundleError("manifest.json: malformed runtime_cache entry")
    return SavedArtifact(
        model_file=manifest.model_file,
        engines=engines,
        runtime_cache=cache_file,
        runtime_cache_key={str(k): str(v) for k, v in cache_key.items()},
        lazy_init=bool(manifest.compile_settings.get("lazy_engine_init", False)),
    )


def recorded_policy(manifest: Manifest) -> RuntimeConfig:
    """The runtime policy the bundle was built and verified under."""
    try:
        return RuntimeConfig.from_record(manifest.runtime["policy"])
    except (KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise BundleError(f"manifest.json: malformed runtime policy ({exc})") from None


def runtime_for(kind: BackendKind) -> ModelRuntime:
    """What loads and runs artifacts of ``kind``: no compiler is imported."""
    if kind is BackendKind.tensorrt:
        from pipeline.runtime.tensorrt import TensorRTRuntime

        return TensorRTRuntime()
    from pipeline.runtime.exported import ExportRuntime

    return ExportRuntime()


def runtime_kind(manifest: Manifest) -> BackendKind:
    """The kind of runtime a bundle needs, if this host has one."""
    try:
        kind = BackendKind(manifest.backend)
    except ValueError:
        raise BundleError(f"manifest.json: unknown backend {manifest.backend!r}") from None
    if kind is BackendKind.tensorrt and (reason := tensorrt_unavailable_reason()) is not None:
        raise BundleError(f"bundle holds TensorRT engines but {reason}")
    return kind


def check_host(
    manifest: Manifest, model_runtime: ModelRuntime, force: bool, device: torch.device | None = None
) -> dict[str, str]:
    """Refuse a bundle built for another kind of host (``force``: warn instead); the host is
    fingerprinted on ``device``, the GPU the model will run on. Returns the fingerprint."""
    hardware_compatible = bool(manifest.compile_settings.get("hardware_compatible", False))
    host = model_runtime.environment(device)
    problems = compatibility_problems(model_runtime.kind, manifest.environment, host, hardware_compatible)
    if problems and not force:
        where = f" ({device})" if device is not None and device.type == "cuda" else ""
        raise BundleError(f"bundle cannot load on this host{where}: " + " | ".join(problems))
    for problem in problems:
        warnings.warn(f"force=True: {problem}", stacklevel=3)
    return host


def verify_bundle(path: str | Path) -> VerificationReport:
    """Re-run the golden check on this host: load the bundle, run the golden inputs, compare."""
    return verify_loaded(load_bundle(path))


def verify_loaded(loaded: LoadedBundle) -> VerificationReport:
    """The golden check of a loaded bundle: each golden set's inputs through it (the opt shape,
    then min, max and odd shapes where the model has dynamic dimensions), against its outputs."""
    from safetensors.torch import load_file

    from pipeline.runtime.verification import VerificationReport, compare

    sets = golden_sets(
        load_file(str(loaded.root / GOLDEN_NAME)),
        [spec.name for spec in loaded.specs],
        len(loaded.manifest.outputs),
    )
    tolerance = Tolerance(**loaded.manifest.verification["tolerance"])
    report = VerificationReport(tolerance=tolerance)
    for name, (inputs, reference) in sets.items():
        label = "golden" if name == OPT_SET else f"golden-{name}"
        outputs = loaded(*(tensor.to(loaded.device) for tensor in inputs))
        report.comparisons.extend(compare(label, outputs, reference, tolerance))
    return report


def input_specs(manifest: Manifest) -> list[InputSpec]:
    """The manifest's input specs as typed objects."""
    try:
        return [InputSpec(**{**spec, "dtype": DType(spec["dtype"])}) for spec in manifest.inputs]
    except (TypeError, KeyError, ValueError) as exc:
        raise BundleError(f"manifest.json: malformed input spec ({exc})") from None


def default_device(manifest: Manifest) -> torch.device:
    """The device a bundle runs on here: the current CUDA device for CUDA bundles (which need a
    GPU), else the CPU."""
    if manifest.device.startswith("cuda") and torch.cuda.is_available():
        return resolve_device("cuda")
    if manifest.device.startswith("cuda"):
        raise BundleError("bundle was built for CUDA but no CUDA GPU is visible on this host")
    return torch.device("cpu")


def _as_directory(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.is_file() and is_archive(path):
        return extract_bundle(path)
    if not path.exists():
        raise BundleError(f"{path}: no such file or directory")
    raise BundleError(f"{path}: not a bundle directory or archive (.tar, .tar.gz)")
