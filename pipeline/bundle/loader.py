"""Loading bundles on deployment hosts: check everything, then deserialize, then apply the policy.

Order matters: deserializing a model runs code (pickle inside the graph file, native engines),
so the manifest and every file's sha256 are checked first, then host compatibility, and only
then are the verified bytes handed to the model's runtime.

This module is what deployment code imports: it must stay light. It imports no compiler
(``torch_tensorrt``, its Python package included), no Hydra or omegaconf and no pipeline stage
unless a function that needs one is called (``bench_bundle``, a runtime preset by name).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.backends import ModelRuntime, SavedArtifact, get_runtime, tensorrt_unavailable_reason
from pipeline.backends.engine_graph import EngineRecord
from pipeline.bundle.archive import extract_bundle, is_archive
from pipeline.bundle.compat import compatibility_problems
from pipeline.bundle.format import (
    GOLDEN_NAME,
    OPT_SET,
    Manifest,
    VerifiedFiles,
    check_files,
    golden_sets,
    output_names,
    read_manifest,
)
from pipeline.bundle.trust import TrustPolicy, check_signature
from pipeline.config.schema import BackendKind, DType, InputSpec, Precision, RuntimeConfig, Tolerance
from pipeline.errors import BundleError
from pipeline.loaded import LoadedModel
from pipeline.timing import Stopwatch

if TYPE_CHECKING:
    from pipeline.config.schema import BenchConfig
    from pipeline.stages.bench import BenchReport
    from pipeline.verification import VerificationReport


class LoadedBundle(LoadedModel):
    """A loaded bundle: call it like the model; ``manifest`` says what it is."""

    def __init__(self, root: Path, manifest: Manifest, **kwargs: Any) -> None:
        self.root = root
        self.manifest = manifest
        #: Seconds each step of :func:`load_bundle` took (unpack and verify, runtime, ...).
        self.load_seconds: dict[str, float] = {}
        super().__init__(**kwargs)


def open_bundle(path: str | Path, trust: TrustPolicy | None = None) -> tuple[Path, Manifest, VerifiedFiles]:
    """Locate (unpacking an archive safely), read and check a bundle; deserialize nothing.

    Checks, in order: the manifest parses and matches its own digest; every listed file has its
    size and sha256 and nothing unlisted is present; the signature, under the host's trust policy
    (``PIPELINE_TRUSTED_KEYS``, ``PIPELINE_REQUIRE_SIGNATURE``) unless ``trust`` is given.
    Returns the verified contents of the model's files: they are read (and hashed) once, here.
    """
    root = _as_directory(Path(path))
    manifest = read_manifest(root)
    files = check_files(root, manifest, saved_artifact(manifest).files)
    # The manifest is byte-exact canonical JSON, so its serialization is the bytes that were read.
    policy = trust if trust is not None else TrustPolicy.from_environment()
    check_signature(root, policy, manifest.to_json().encode("utf-8"))
    return root, manifest, files


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
    Raises :class:`BundleError` before deserializing anything if the bundle is not intact, not
    trusted, or built for another kind of host (``force=True`` loads it anyway: for experts).
    """
    watch = Stopwatch()
    with watch.lap("open and verify"):
        root, manifest, files = open_bundle(path, trust)
    with watch.lap("runtime library"):
        model_runtime = get_runtime(runtime_kind(manifest))
        model_runtime.prepare()
    with watch.lap("host check"):
        check_host(manifest, model_runtime, force)
    target = torch.device(device) if device is not None else default_device(manifest)
    with watch.lap("deserialize"):
        module = model_runtime.load(saved_artifact(manifest), files, target)
    with watch.lap("apply policy"):
        loaded = LoadedBundle(
            root=root,
            manifest=manifest,
            module=module,
            backend=model_runtime,
            specs=input_specs(manifest),
            precision=Precision(manifest.precision),
            device=target,
            policy=recorded_policy(manifest) if runtime is None else runtime,
            expected_engines=manifest.engine_count,
            output_names=output_names(manifest),
        )
    loaded.load_seconds = watch.seconds
    return loaded


def saved_artifact(manifest: Manifest) -> SavedArtifact:
    """The model files a manifest lists: the model file and each engine's record."""
    engines = [EngineRecord.from_dict(entry) for entry in manifest.engines]
    if manifest.backend == BackendKind.tensorrt.value and len(engines) != manifest.engine_count:
        raise BundleError(
            f"manifest.json: {len(engines)} engine files listed, engine_count says {manifest.engine_count}"
        )
    return SavedArtifact(model_file=manifest.model_file, engines=engines)


def recorded_policy(manifest: Manifest) -> RuntimeConfig:
    """The runtime policy the bundle was built and verified under."""
    try:
        return RuntimeConfig(**manifest.runtime["policy"])
    except (KeyError, TypeError) as exc:
        raise BundleError(f"manifest.json: malformed runtime policy ({exc})") from None


def runtime_kind(manifest: Manifest) -> BackendKind:
    """The kind of runtime a bundle needs, if this host has one."""
    try:
        kind = BackendKind(manifest.backend)
    except ValueError:
        raise BundleError(f"manifest.json: unknown backend {manifest.backend!r}") from None
    if kind is BackendKind.tensorrt and (reason := tensorrt_unavailable_reason()) is not None:
        raise BundleError(f"bundle holds TensorRT engines but {reason}")
    return kind


def check_host(manifest: Manifest, model_runtime: ModelRuntime, force: bool) -> None:
    """Refuse a bundle built for another kind of host (``force``: warn instead)."""
    hardware_compatible = bool(manifest.compile_settings.get("hardware_compatible", False))
    problems = compatibility_problems(
        model_runtime.kind, manifest.environment, model_runtime.environment(), hardware_compatible
    )
    if problems and not force:
        raise BundleError("bundle cannot load on this host: " + " | ".join(problems))
    for problem in problems:
        warnings.warn(f"force=True: {problem}", stacklevel=3)


def verify_bundle(path: str | Path) -> VerificationReport:
    """Re-run the golden check on this host: load the bundle, run the golden inputs, compare."""
    return verify_loaded(load_bundle(path))


def verify_loaded(loaded: LoadedBundle) -> VerificationReport:
    """The golden check of a loaded bundle: each golden set's inputs through it (the opt shape,
    then min, max and odd shapes where the model has dynamic dimensions), against its outputs."""
    from safetensors.torch import load_file

    from pipeline.verification import VerificationReport, compare

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


def bench_bundle(path: str | Path, runtime: str | None, settings: BenchConfig) -> BenchReport:
    """Time a bundle on this host: load, first call, latency (and extra policies), memory."""
    from pipeline.config.presets import as_policy
    from pipeline.models import make_inputs
    from pipeline.stages.bench import bench_model

    root, manifest, _ = open_bundle(path)
    policy = as_policy(runtime) if runtime else recorded_policy(manifest)
    specs = input_specs(manifest)
    inputs = make_inputs(specs, 0, Precision(manifest.precision), default_device(manifest))
    return bench_model(lambda p: load_bundle(root, runtime=p), policy, inputs, settings)


def input_specs(manifest: Manifest) -> list[InputSpec]:
    """The manifest's input specs as typed objects."""
    try:
        return [InputSpec(**{**spec, "dtype": DType(spec["dtype"])}) for spec in manifest.inputs]
    except (TypeError, KeyError, ValueError) as exc:
        raise BundleError(f"manifest.json: malformed input spec ({exc})") from None


def default_device(manifest: Manifest) -> torch.device:
    """The device a bundle runs on here: CUDA for CUDA bundles (which need a GPU), else CPU."""
    if manifest.device.startswith("cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if manifest.device.startswith("cuda"):
        raise BundleError("bundle was built for CUDA but no CUDA GPU is visible on this host")
    return torch.device("cpu")


def _as_directory(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.is_file() and is_archive(path):
        return extract_bundle(path)
    raise BundleError(f"{path}: not a bundle directory or archive (.tar, .tar.gz)")
