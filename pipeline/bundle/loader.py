"""Loading bundles on deployment hosts: check everything, then deserialize, then apply the policy.

Order matters: deserializing a model runs code (pickle inside torch.export archives, native
engines), so the manifest and every file's sha256 are checked first, then host compatibility,
and only then is the model file handed to its backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from pipeline.backends import Backend, get_backend, tensorrt_unavailable_reason
from pipeline.bundle.archive import extract_bundle
from pipeline.bundle.compat import compatibility_problems
from pipeline.bundle.format import (
    GOLDEN_INPUT_PREFIX,
    GOLDEN_NAME,
    GOLDEN_OUTPUT_PREFIX,
    Manifest,
    check_files,
    read_manifest,
)
from pipeline.bundle.trust import TrustPolicy, check_signature
from pipeline.config.presets import as_policy
from pipeline.config.schema import (
    BackendKind,
    BenchConfig,
    DType,
    InputSpec,
    Precision,
    RuntimeConfig,
    Tolerance,
)
from pipeline.console import console
from pipeline.errors import BundleError
from pipeline.loaded import LoadedModel
from pipeline.models import make_inputs
from pipeline.stages.bench import BenchReport, bench_model
from pipeline.verification import VerificationReport, compare


class LoadedBundle(LoadedModel):
    """A loaded bundle: call it like the model; ``manifest`` says what it is."""

    def __init__(self, root: Path, manifest: Manifest, **kwargs: Any) -> None:
        self.root = root
        self.manifest = manifest
        super().__init__(**kwargs)


def open_bundle(path: str | Path, trust: TrustPolicy | None = None) -> tuple[Path, Manifest]:
    """Locate (unpacking a .tar.gz safely), read and check a bundle; deserialize nothing.

    Checks, in order: the manifest parses and matches its own digest; every listed file has its
    size and sha256 and nothing unlisted is present; the signature, under the host's trust policy
    (``PIPELINE_TRUSTED_KEYS``, ``PIPELINE_REQUIRE_SIGNATURE``) unless ``trust`` is given.
    """
    root = _as_directory(Path(path))
    manifest = read_manifest(root)
    check_files(root, manifest)
    check_signature(root, trust if trust is not None else TrustPolicy.from_environment())
    return root, manifest


def load_bundle(
    path: str | Path,
    runtime: RuntimeConfig | str | None = None,
    device: str | torch.device | None = None,
    *,
    trust: TrustPolicy | None = None,
    force: bool = False,
) -> LoadedBundle:
    """Load a bundle directory or .tar.gz and put its runtime policy back on.

    ``runtime`` overrides the recorded policy (a preset name such as ``"cudagraphs"`` or a
    :class:`RuntimeConfig`); it can be switched later with ``loaded.set_runtime(...)``.
    Raises :class:`BundleError` before deserializing anything if the bundle is not intact, not
    trusted, or built for another kind of host (``force=True`` loads it anyway: for experts).
    """
    root, manifest = open_bundle(path, trust)
    backend = backend_for_manifest(manifest, force)
    target = torch.device(device) if device is not None else default_device(manifest)
    module = backend.load(root / manifest.model_file, target)
    policy = as_policy(runtime) if runtime is not None else RuntimeConfig(**manifest.runtime["policy"])
    return LoadedBundle(
        root=root,
        manifest=manifest,
        module=module,
        backend=backend,
        specs=input_specs(manifest),
        precision=Precision(manifest.precision),
        device=target,
        policy=policy,
        expected_engines=manifest.engine_count,
    )


def backend_for_manifest(manifest: Manifest, force: bool) -> Backend:
    """The backend that reads this bundle, once this host is known to be able to run it."""
    try:
        kind = BackendKind(manifest.backend)
    except ValueError:
        raise BundleError(f"manifest.json: unknown backend {manifest.backend!r}") from None
    if kind is BackendKind.tensorrt and (reason := tensorrt_unavailable_reason()) is not None:
        raise BundleError(f"bundle holds TensorRT engines but {reason}")
    backend = get_backend(kind)
    hardware_compatible = bool(manifest.compile_settings.get("hardware_compatible", False))
    problems = compatibility_problems(kind, manifest.environment, backend.environment(), hardware_compatible)
    if problems and not force:
        raise BundleError("bundle cannot load on this host: " + " | ".join(problems))
    for problem in problems:
        console.print(f"[yellow]warning (force=True):[/] {problem}")
    return backend


def verify_bundle(path: str | Path) -> VerificationReport:
    """Re-run the golden check on this host: load the bundle, run the golden inputs, compare."""
    loaded = load_bundle(path)
    golden = load_file(str(loaded.root / GOLDEN_NAME))
    inputs = tuple(golden[GOLDEN_INPUT_PREFIX + spec.name].to(loaded.device) for spec in loaded.specs)
    reference = [golden[f"{GOLDEN_OUTPUT_PREFIX}{i}"] for i in range(len(loaded.manifest.outputs))]
    tolerance = Tolerance(**loaded.manifest.verification["tolerance"])
    report = VerificationReport(tolerance=tolerance)
    report.comparisons = compare("golden", loaded(*inputs), reference, tolerance)
    return report


def bench_bundle(path: str | Path, runtime: str | None, settings: BenchConfig) -> BenchReport:
    """Time a bundle on this host: load, first call, latency (and extra policies), memory."""
    root, manifest = open_bundle(path)
    policy = as_policy(runtime) if runtime else RuntimeConfig(**manifest.runtime["policy"])
    specs = input_specs(manifest)
    device = default_device(manifest)
    inputs = make_inputs(specs, 0, Precision(manifest.precision), device)
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
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        return extract_bundle(path)
    raise BundleError(f"{path}: not a bundle directory or .tar.gz")
