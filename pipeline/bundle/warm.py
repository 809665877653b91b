"""``python -m pipeline.bundle warm``: a copy of a TensorRT-RTX bundle with a runtime cache for this host.

A bundle's runtime cache (its compiled kernels, ``engines/runtime.cache``) is made on the build host
and keyed by its SM, TensorRT-RTX and CUDA versions; on a host of another GPU kind the key misses and
every load compiles the kernels again. Warming makes that host its own bundle, once, ahead of time:

1. the source is opened and checked (sha256 of every file, signature under this host's trust policy);
2. it is copied to a new directory beside it (never into an existing one; the source is only read);
3. the copy is loaded through the own runner with its recorded policy and ``runtime_cache=on``, every
   golden set runs and must pass, so every kernel the deployment loads need is compiled;
4. the cache is written into the copy, keyed for this host, the manifest's file list refreshed, the
   old signature dropped and a new one made with ``--key`` (unsigned without it);
5. the copy is loaded afresh and checked as a deployment host would, then moved to its final name.

Decisions:

- The bundle id does not change. It names what decides the engines (config identity, build
  environment, weights: :func:`pipeline.runtime.format.bundle_id`), and the engines are byte for byte
  the source's; the cache is host-specific data that the manifest's ``runtime_cache.key`` describes, and
  the manifest digest and signature already tell the two copies apart. The warmed directory's name ends
  in ``-warm-sm<SM>``, not in the id, so the bundle store never takes it for the build's output.
- A source whose cache already matches this host is not copied: nothing is written, the result says so
  (the CLI prints the source's path and exits 0). Its cache was made by a verified build on a host of
  this kind; warming it again would only duplicate it.
- A bundle recorded with ``runtime_cache=off`` is refused: loads under its own policy would ignore a cache.

Nothing here runs at call time: a cache is written only by this tool and the build's verify stage.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.bundle.pack import compression_for_name, write_archive
from pipeline.errors import BundleError, ConfigError
from pipeline.runtime.archive import is_archive, release_unpacked, split_archive_suffix
from pipeline.runtime.base import SavedArtifact
from pipeline.runtime.executor import CacheStatus, RunnerKind
from pipeline.runtime.format import (
    RUNTIME_CACHE_NAME,
    SIGNATURE_NAME,
    Manifest,
    check_files,
    describe_files,
    read_manifest,
    write_manifest,
)
from pipeline.runtime.loader import (
    check_host,
    load_bundle,
    open_bundle,
    recorded_policy,
    runtime_for,
    runtime_kind,
    saved_artifact,
    verify_loaded,
)
from pipeline.runtime.policy import RuntimeCacheMode, RuntimeConfig
from pipeline.runtime.trust import TrustPolicy, public_key_pem, sign_bundle, signing_key
from pipeline.runtime.types import BackendKind

RTX_BUILD = "tensorrt-rtx"
#: Suffix of a warmed copy's directory name, before the host's SM (``-warm-sm90``).
WARM_SUFFIX = "-warm-sm"


@dataclass(frozen=True)
class WarmResult:
    """What :func:`warm_bundle` did."""

    #: The bundle to deploy on this host: the warmed copy, or the source when it was already warm.
    path: Path
    #: Whether a new bundle was written (False: the source's cache already matched this host).
    written: bool
    #: The host key the cache is filed under.
    cache_key: dict[str, str]
    #: Size of the runtime cache written (0 when nothing was written).
    cache_bytes: int = 0
    #: Whether the new bundle is signed (``--key``); an unsigned one is refused where signatures are required.
    signed: bool = False
    #: The golden check of the warmed bundle, loaded afresh (empty when nothing was written).
    verification: str = ""
    #: ``load_report["engines"]`` of that fresh load: runner and runtime cache hit or miss.
    load_engines: dict[str, Any] = field(default_factory=dict)


def warm_refusal(
    manifest: Manifest,
    environment: dict[str, str],
    policy: RuntimeConfig,
    artifact: SavedArtifact,
    rtx_importable: bool,
) -> str | None:
    """Why this bundle cannot be warmed on a host with ``environment`` (None when it can).

    ``policy`` is the bundle's recorded one; the engines must run through the own runner here
    under it, since only that runner reads and makes caches."""
    from pipeline.runtime.tensorrt import choose_runner

    if manifest.backend != BackendKind.tensorrt.value:
        return f"not a TensorRT bundle (backend {manifest.backend}): it has no engines to warm"
    if manifest.environment.get("tensorrt_build") != RTX_BUILD:
        built = manifest.environment.get("tensorrt_build", "unknown")
        return f"its engines are {built}'s, not TensorRT-RTX's: runtime caches are TensorRT-RTX's"
    if environment.get("tensorrt_build") != RTX_BUILD:
        return f"this host's TensorRT is {environment.get('tensorrt_build', 'unknown')}, not TensorRT-RTX"
    if policy.runtime_cache is RuntimeCacheMode.off:
        return "its recorded policy has runtime_cache=off: loads under it would not read a cache"
    try:
        own, reason = choose_runner(environment, policy, artifact, rtx_importable)
    except ConfigError as error:  # TensorRT-RTX settings recorded, but engines that cannot take them
        own, reason = False, str(error)
    if not own:
        return f"its engines would not run on the own runner here: {reason}"
    return None


def warming_policy(policy: RuntimeConfig) -> RuntimeConfig:
    """The recorded policy with the runtime cache on: the kernels its loads need get cached."""
    return dataclasses.replace(policy, runtime_cache=RuntimeCacheMode.on)


def warm_target_name(source: Path, environment: dict[str, str]) -> str:
    """``<bundle>-warm-sm<SM>``: the default name of a warmed copy; an archive's copy is an
    archive of the same kind (``<bundle>-warm-sm<SM>.tar``)."""
    name, suffix = split_archive_suffix(source)
    return f"{name}{WARM_SUFFIX}{environment.get('sm', 'unknown').replace('.', '')}{suffix}"


def write_runtime_cache(
    root: Path, cache: bytes, key: dict[str, str], private_key_pem: bytes | None = None
) -> Manifest:
    """Put ``cache`` into the bundle copy at ``root`` as its runtime cache filed under ``key``:
    write the file, the manifest's ``runtime_cache`` and file list, drop the old signature and
    sign with ``private_key_pem`` when given. Returns the manifest written."""
    if not cache:
        raise BundleError("the runtime cache is empty: no engine context was created")
    manifest = read_manifest(root)
    target = root / RUNTIME_CACHE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(cache)
    manifest.runtime_cache = {"file": RUNTIME_CACHE_NAME, "key": dict(key)}
    (root / SIGNATURE_NAME).unlink(missing_ok=True)
    manifest.files = describe_files(root)
    write_manifest(root, manifest)
    if private_key_pem is not None:
        sign_bundle(root, private_key_pem)
    return manifest


def copy_bundle(root: Path, target: Path) -> None:
    """Copy the bundle files at ``root`` into the new directory ``target``, without the signature
    (the manifest is rewritten, so it would not verify)."""
    shutil.copytree(root, target, symlinks=False)
    (target / SIGNATURE_NAME).unlink(missing_ok=True)


def warm_bundle(
    source: str | Path,
    out: str | Path | None = None,
    private_key_pem: bytes | None = None,
    device: str | None = None,
    trust: TrustPolicy | None = None,
) -> WarmResult:
    """Write a verified copy of the TensorRT-RTX bundle ``source`` (directory or archive) with a
    runtime cache for this host, at ``out`` (default: beside the source, ``-warm-sm<SM>``; an
    archive when ``out``'s name, or the source, is one), signed
    with ``private_key_pem`` if given. The source is only read. Raises :class:`BundleError` with one
    line when the bundle cannot be warmed here, or the target exists."""
    if private_key_pem is not None:
        signing_key(private_key_pem)  # a bad key is said now, not after the kernels compiled
    source = Path(source).resolve()
    opened = open_bundle(source, trust)
    root, manifest = opened.root, opened.manifest
    try:
        return _warm_opened(source, root, manifest, out, private_key_pem, device)
    finally:
        release_unpacked(root)


def _warm_opened(
    source: Path,
    root: Path,
    manifest: Manifest,
    out: str | Path | None,
    private_key_pem: bytes | None,
    device: str | None,
) -> WarmResult:
    from pipeline.runtime.loaded import resolve_device
    from pipeline.runtime.rtx_runner import RTX_MODULE, cache_key, cache_mismatch

    if manifest.backend != BackendKind.tensorrt.value:
        raise BundleError(f"cannot warm {source}: not a TensorRT bundle (backend {manifest.backend})")
    model_runtime = runtime_for(runtime_kind(manifest))  # refuses without a GPU or Torch-TensorRT
    target_device = resolve_device(device or "cuda")
    model_runtime.prepare()
    environment = check_host(manifest, model_runtime, False, target_device)
    policy, artifact = recorded_policy(manifest), saved_artifact(manifest)
    importable = importlib.util.find_spec(RTX_MODULE) is not None
    if refusal := warm_refusal(manifest, environment, policy, artifact, importable):
        raise BundleError(f"cannot warm {source}: {refusal}")
    key = cache_key(environment)
    if manifest.runtime_cache and not cache_mismatch(manifest.runtime_cache.get("key", {}), environment):
        return WarmResult(path=source, written=False, cache_key=key)
    target = Path(out) if out is not None else source.with_name(warm_target_name(source, environment))
    if target.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{target}: inside the source bundle; warm never writes into the source")
    if target.exists():
        raise BundleError(f"{target}: already exists; warm never overwrites (give --out a new path)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target under a name of its own, moved into place once verified: a failed
    # warm leaves no half-made bundle, and nothing is written to a shared temporary directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        # Named as the bundle will be: an archive's top directory carries the name.
        copy = staging / split_archive_suffix(target)[0]
        copy_bundle(root, copy)
        # What was copied must be what open_bundle verified (the source may be shared storage
        # that changes meanwhile): the same manifest, every file with the sha256 it lists.
        if read_manifest(copy) != manifest:
            raise BundleError(f"{source}: the manifest changed while it was copied; nothing written")
        check_files(copy, manifest, ())
        cache = _compile_cache(copy, warming_policy(policy), str(target_device))
        write_runtime_cache(copy, cache, key, private_key_pem)
        signed = private_key_pem is not None
        # Loaded afresh as a deployment host would: its recorded policy, the new signature required.
        check = TrustPolicy()
        if private_key_pem is not None:
            check = TrustPolicy(trusted_keys=(public_key_pem(private_key_pem),), require_signature=True)
        warmed = load_bundle(copy, device=str(target_device), trust=check)
        try:
            report = verify_loaded(warmed)
            outcome = warmed.executor.outcome()
        finally:
            warmed.close()
        if not report.passed:
            raise BundleError(f"the warmed copy failed its golden check here: {report.summary()}")
        if outcome.cache.status is not CacheStatus.hit:
            raise BundleError(
                f"the warmed copy's runtime cache was not used here: {outcome.cache.describe()}"
            )
        if target.exists():
            raise BundleError(f"{target}: appeared while warming; warm never overwrites")
        if is_archive(target):
            write_archive(copy, target, compression_for_name(target))
        else:
            copy.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return WarmResult(
        path=target,
        written=True,
        cache_key=key,
        cache_bytes=len(cache),
        signed=signed,
        verification=report.summary(),
        load_engines=outcome.record(),
    )


def _compile_cache(copy: Path, policy: RuntimeConfig, device: str) -> bytes:
    """Load the copy through the own runner, run every golden set (each must pass) so every
    kernel is compiled, and return the runtime cache's contents."""
    # The copy is the source's files, just checked against the source's trust policy.
    loaded = load_bundle(copy, runtime=policy, device=device, trust=TrustPolicy())
    try:
        runner = loaded.executor.runner
        if runner is not RunnerKind.rtx:
            raise BundleError(f"the copy loaded on the {runner.value}, not the own runner: no cache to make")
        report = verify_loaded(loaded)
        if not report.passed:
            raise BundleError(f"golden check failed here, nothing written: {report.summary()}")
        cache = loaded.executor.cache_bytes()
    finally:
        loaded.close()
    if not cache:
        raise BundleError("TensorRT-RTX gave an empty runtime cache after the golden sets ran")
    return cache
