"""Running TensorRT bundles with the Torch-TensorRT runtime library alone.

``import torch_tensorrt`` takes ~11 s (it imports the compiler, dynamo and the TensorRT Python
bindings). Running a saved engine needs none of it: the runtime library that the installed
Torch-TensorRT ships (``torch_tensorrt/lib/libtorchtrt_runtime.so``) registers the engine class
``torch.classes.tensorrt.Engine``, the operator ``torch.ops.tensorrt.execute_engine`` and the
process-wide CUDA-graph switch. This module loads that library and nothing else of the package,
rebuilds engines from their raw bytes, and applies runtime policies at engine level.

The host fingerprint (:func:`runtime_environment`) comes from installed package metadata, the
same way on the build host and on the deployment host, so the compatibility gate compares like
with like without importing either Python package.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import BackendUnavailableError, BundleError, ConfigError
from pipeline.runtime import rtx_runner
from pipeline.runtime.base import FileSource, ModelRuntime, SavedArtifact
from pipeline.runtime.compat import version_tuple
from pipeline.runtime.engine_graph import EngineRecord, attach_engines, escaping_engines, load_graph
from pipeline.runtime.engines import EngineRef, ModeGate, apply_to_engines, find_engines, resources_held
from pipeline.runtime.policy import PolicyReport, RuntimeCacheMode, RuntimeConfig
from pipeline.runtime.types import BackendKind

RUNTIME_LIBRARY = "libtorchtrt_runtime.so"
# (distribution, TensorRT build it belongs to); the RTX build first: both provide `torch_tensorrt`.
TORCH_TENSORRT_DISTRIBUTIONS = (("torch-tensorrt-rtx", "tensorrt-rtx"), ("torch-tensorrt", "tensorrt"))
TENSORRT_DISTRIBUTIONS = {
    "tensorrt-rtx": ("tensorrt-rtx-cu13-libs", "tensorrt-rtx-cu12-libs", "tensorrt-rtx"),
    "tensorrt": ("tensorrt-cu13-libs", "tensorrt-cu12-libs", "tensorrt-libs", "tensorrt"),
}
# Packages whose shared libraries the runtime library links against, when not on the loader path.
TENSORRT_LIBRARY_PACKAGES = ("tensorrt_rtx_libs", "tensorrt_libs")
# Torch-TensorRT's CudaGraphsMode: STANDARD = 0, SUBGRAPH_CUDAGRAPHS = 1 (per engine).
CUDAGRAPHS_OFF, CUDAGRAPHS_ON = 0, 1
RTX_BUILD = "tensorrt-rtx"
# The first Torch-TensorRT whose C++ runtime takes a TensorRT-RTX runtime config (and cache).
NATIVE_RUNTIME_CONFIG = (2, 13)
OWN_RUNNER = "tensorrt_rtx runner (pipeline.runtime.rtx_runner)"
CPP_RUNTIME = "Torch-TensorRT C++ runtime (execute_engine)"
#: Attribute of a loaded module holding what its load decided (runner, runtime cache).
LOAD_DETAILS = "_pipeline_load_details"

_load_lock = threading.Lock()
# Set once this module loaded the runtime library itself (not through ``import torch_tensorrt``).
_runtime_library_loaded = False


def runtime_library_loaded_alone() -> bool:
    """True when this process registered the engine operators from the runtime library alone:
    ``import torch_tensorrt`` would then register them a second time, which aborts the process."""
    return _runtime_library_loaded and "torch_tensorrt" not in sys.modules


def installed_tensorrt_build() -> str:
    """Which TensorRT build the installed Torch-TensorRT belongs to (``tensorrt-rtx``,
    ``tensorrt`` or ``unknown``), from package metadata: nothing is loaded."""
    return installed_torch_tensorrt()[0]


def installed_torch_tensorrt() -> tuple[str, str]:
    """The installed Torch-TensorRT's TensorRT build and its version (``unknown`` each when it
    is not installed), from package metadata."""
    for distribution, tensorrt_build in TORCH_TENSORRT_DISTRIBUTIONS:
        found = _distribution_version(distribution)
        if found is not None:
            return tensorrt_build, found[1]
    return "unknown", "unknown"


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT engines cannot run here, or None when they can (nothing is imported)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt is not installed (pip install '.[tensorrt]' or '.[tensorrt-rtx]')"
    return None


def _ops_registered() -> bool:
    return hasattr(torch.ops.tensorrt, "execute_engine")


def runtime_library_path() -> Path | None:
    """Where the installed Torch-TensorRT keeps its runtime library (nothing is imported)."""
    spec = importlib.util.find_spec("torch_tensorrt")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "lib" / RUNTIME_LIBRARY
        if candidate.is_file():
            return candidate
    return None


def load_runtime() -> None:
    """Register the TensorRT engine class and operators in this process (idempotent).

    A process that imported ``torch_tensorrt`` has them already (from its full library); loading
    the runtime library a second time would register them twice, so it is skipped then.
    """
    with _load_lock:
        if _ops_registered():
            return
        library = runtime_library_path()
        if library is None:
            raise BackendUnavailableError(
                "torch_tensorrt is not installed (pip install torch-tensorrt, or torch-tensorrt-rtx for "
                f"TensorRT-RTX bundles): its {RUNTIME_LIBRARY} runs the engines"
            )
        global _runtime_library_loaded
        _runtime_library_loaded = True
        try:
            torch.ops.load_library(str(library))
        except OSError:
            # Wheels keep TensorRT's own libraries in a package directory that is not on the
            # loader path; the TensorRT Python package would preload them, so do the same.
            _preload_tensorrt_libraries()
            torch.ops.load_library(str(library))


def _preload_tensorrt_libraries() -> None:
    libraries: list[Path] = []
    for package in TENSORRT_LIBRARY_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            libraries += sorted(Path(location).glob("lib*.so*"))
    pending = libraries
    for _ in range(len(libraries)):  # dependency order is unknown: retry what failed
        failed = []
        for path in pending:
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                failed.append(path)
        if not failed or len(failed) == len(pending):
            return
        pending = failed


def _distribution_version(*names: str) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtime_environment(device: torch.device | None = None) -> dict[str, str]:
    """What decides whether TensorRT engines load here: Torch-TensorRT and TensorRT builds and
    versions, the runtime ABI, CUDA, the GPU (``device``, default the current one) and its SM,
    the platform."""
    build, torch_tensorrt_version = installed_torch_tensorrt()
    tensorrt = _distribution_version(*TENSORRT_DISTRIBUTIONS.get(build, ()))
    load_runtime()
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "torch": torch.__version__,
        "torch_tensorrt": torch_tensorrt_version,
        "torch_tensorrt_abi": str(torch.ops.tensorrt.ABI_VERSION()),
        "tensorrt": tensorrt[1] if tensorrt else "unknown",
        "tensorrt_build": build,
        "cuda": str(torch.version.cuda),
        "gpu": torch.cuda.get_device_name(device),
        "sm": f"{major}.{minor}",
        "platform": platform.machine(),
    }


def make_engine(record: EngineRecord, engine_bytes: bytes) -> Any:
    """A ``torch.classes.tensorrt.Engine`` built from its raw bytes and recorded fields."""
    length, index = _layout_constant("SERIALIZATION_LEN"), _layout_constant("ENGINE_IDX")
    if (length is not None and len(record.serialized_info) != length) or (
        index is not None and record.engine_index != index
    ):
        raise BundleError(
            f"engine {record.attribute}: recorded with {len(record.serialized_info)} fields (engine at "
            f"{record.engine_index}), this Torch-TensorRT runtime expects {length} (engine at {index}); "
            "rebuild the bundle here"
        )
    return torch.classes.tensorrt.Engine(record.constructor_args(engine_bytes))


def _layout_constant(name: str) -> int | None:
    """A constant of the runtime's serialized-engine layout, where the runtime exports it."""
    if not hasattr(torch.ops.tensorrt, name):
        return None
    return int(getattr(torch.ops.tensorrt, name)())


def engine_index() -> int:
    """Index of the engine bytes in the serialized-engine layout (3 in every ABI so far)."""
    index = _layout_constant("ENGINE_IDX")
    return 3 if index is None else index


def cudagraphs_enabled() -> bool:
    """Whether Torch-TensorRT's process-wide CUDA-graph mode is on (as the engines see it)."""
    return bool(torch.ops.tensorrt.get_cudagraphs_mode() != CUDAGRAPHS_OFF)


def set_cudagraphs(enabled: bool) -> None:
    """Switch the process-wide CUDA-graph mode (per-engine graphs) on or off."""
    torch.ops.tensorrt.set_cudagraphs_mode(CUDAGRAPHS_ON if enabled else CUDAGRAPHS_OFF)


#: Every loaded TensorRT model in this process goes through this gate (see ModeGate).
CUDA_GRAPHS_GATE = ModeGate(cudagraphs_enabled, set_cudagraphs)


def rtx_settings_refused(policy: RuntimeConfig, why: str) -> ConfigError | None:
    """The error for TensorRT-RTX settings set on engines that cannot take them (None if unset)."""
    settings = policy.rtx_settings()
    if not settings:
        return None
    named = ", ".join(f"runtime.{name}={value}" for name, value in settings.items())
    return ConfigError(f"{named}: TensorRT-RTX settings, but {why}; leave them unset (null / auto)")


def choose_runner(
    environment: dict[str, str], policy: RuntimeConfig, artifact: SavedArtifact, rtx_importable: bool
) -> tuple[bool, str]:
    """Whether a TensorRT bundle's engines run through our own runner, and why (or why not).

    The own runner when the engines are TensorRT-RTX's, the installed Torch-TensorRT's C++ runtime
    takes no runtime config (before 2.13) and a TensorRT-RTX setting or the runtime cache is in
    use; otherwise the C++ runtime. Raises :class:`ConfigError` for TensorRT-RTX settings on
    engines that cannot take them.
    """
    if environment.get("tensorrt_build") != RTX_BUILD:
        why = f"this host's TensorRT is {environment.get('tensorrt_build', 'unknown')}, not TensorRT-RTX"
        if refused := rtx_settings_refused(policy, why):
            raise refused
        return False, "standard TensorRT engines"
    version = environment.get("torch_tensorrt", "unknown")
    if version_tuple(version) >= NATIVE_RUNTIME_CONFIG:
        # Not wired yet: the C++ runtime of 2.13+ takes these settings itself (see README).
        if refused := rtx_settings_refused(
            policy, f"Torch-TensorRT {version}'s runtime settings are not wired"
        ):
            raise refused
        return False, f"Torch-TensorRT {version} (runtime settings through its own API: not wired yet)"
    if policy.runtime_cache is RuntimeCacheMode.off and set(policy.rtx_settings()) <= {"runtime_cache"}:
        return False, "runtime.runtime_cache=off and no TensorRT-RTX setting"
    if dependent := [
        r.attribute for r in artifact.engines if rtx_runner.needs_output_allocator(r.serialized_info)
    ]:
        why = f"engine {dependent[0]} has data-dependent output shapes (output allocator)"
        if refused := rtx_settings_refused(policy, why):
            raise refused
        return False, why
    if not rtx_importable:
        why = f"the TensorRT-RTX Python bindings ({rtx_runner.RTX_MODULE}) are not installed"
        if refused := rtx_settings_refused(policy, why):
            raise refused
        return False, why + "; runtime cache not used"
    return True, f"TensorRT-RTX with Torch-TensorRT {version} (< 2.13: no runtime config in its C++ runtime)"


def _imports(load: Any) -> bool:
    try:
        load()
    except BackendUnavailableError:
        return False
    return True


def cache_decision(
    artifact: SavedArtifact, environment: dict[str, str], policy: RuntimeConfig
) -> tuple[bool, str]:
    """Whether the bundle's runtime cache is used here, and why not when it is not."""
    if policy.runtime_cache is RuntimeCacheMode.off:
        return False, "miss: runtime.runtime_cache=off"
    if not artifact.runtime_cache:
        return False, "miss: the bundle has no runtime cache"
    if mismatch := rtx_runner.cache_mismatch(artifact.runtime_cache_key, environment):
        return False, f"miss: {mismatch}"
    return True, ""


class TensorRTRuntime(ModelRuntime):
    """Loads TensorRT bundles and applies runtime policies, without ``import torch_tensorrt``."""

    kind = BackendKind.tensorrt

    def prepare(self) -> None:
        load_runtime()

    def environment(self, device: torch.device | None = None) -> dict[str, str]:
        return runtime_environment(device)

    def load(
        self,
        artifact: SavedArtifact,
        files: FileSource,
        device: torch.device,
        policy: RuntimeConfig | None = None,
    ) -> nn.Module:
        """Deserialize the graph and its engines onto ``device`` (an indexed CUDA device): the
        runtime places an engine on the current device when that one is compatible.

        TensorRT-RTX engines run through :mod:`pipeline.runtime.rtx_runner` where
        :func:`choose_runner` says so; :meth:`load_details` tells which runner and whether the
        bundle's runtime cache was used."""
        policy = policy or RuntimeConfig()
        environment = runtime_environment(device)
        # Imported, not just found: bindings that are present but fail to import (another CUDA,
        # missing libraries) leave the engines to the C++ runtime instead of failing the load.
        importable = environment.get("tensorrt_build") == RTX_BUILD and _imports(rtx_runner.tensorrt_rtx)
        own, reason = choose_runner(environment, policy, artifact, importable)
        if own:
            return self._load_with_runner(artifact, files, device, policy, environment, reason)
        module = self._load_cpp(artifact, files, device)
        cache = "not used: " + (
            "standard TensorRT" if environment.get("tensorrt_build") != RTX_BUILD else reason
        )
        setattr(module, LOAD_DETAILS, {"runner": CPP_RUNTIME, "reason": reason, "runtime_cache": cache})
        return module

    def _load_with_runner(
        self,
        artifact: SavedArtifact,
        files: FileSource,
        device: torch.device,
        policy: RuntimeConfig,
        environment: dict[str, str],
        reason: str,
    ) -> nn.Module:
        use_cache, why = cache_decision(artifact, environment, policy)
        data = files.read(artifact.runtime_cache) if use_cache and artifact.runtime_cache else None
        # Kept also under runtime_cache=off: set_runtime may switch it on (with an empty cache).
        cache = rtx_runner.SharedRuntimeCache(data)
        settings = rtx_runner.RunnerSettings.from_policy(policy)
        with torch.cuda.device(device):
            module = load_graph(files.read(artifact.model_file), device)
            runners = {
                record.attribute: rtx_runner.make_runner(
                    record.serialized_info,
                    files.read(record.file),
                    device,
                    cache,
                    record.attribute,
                    settings,
                    lazy=artifact.lazy_init,
                )
                for record in artifact.engines
            }
            attach_engines(module, runners, rtx_runner.execute_rtx)
        setattr(
            module,
            LOAD_DETAILS,
            {"runner": OWN_RUNNER, "reason": reason, "runtime_cache": why, "_cache": cache},
        )
        return module

    def _load_cpp(self, artifact: SavedArtifact, files: FileSource, device: torch.device) -> nn.Module:
        """The engines as Torch-TensorRT's C++ runtime objects (what refit works on)."""
        load_runtime()
        with torch.cuda.device(device):
            module = load_graph(files.read(artifact.model_file), device)
            engines = {
                record.attribute: make_engine(record, files.read(record.file)) for record in artifact.engines
            }
            execute = torch.ops.tensorrt.execute_engine.default
            attach_engines(module, engines, execute)
        # An engine whose outputs leave the call must hand out new tensors every call; by default
        # (as rebuilt from its serialized fields) an engine with pre-allocated outputs returns the
        # same buffers each time, so callers' earlier outputs would change under them.
        # Torch-TensorRT's compiler marks these engines; its serialized form does not keep it.
        for attribute in escaping_engines(module, execute):
            engines[attribute].set_output_tensors_as_unowned(True)
        return module

    def load_details(self, module: nn.Module) -> dict[str, Any]:
        details = dict(getattr(module, LOAD_DETAILS, {}))
        cache = details.pop("_cache", None)
        if details.get("runner") == OWN_RUNNER and not details.get("runtime_cache"):
            if cache is None or cache.loaded is None:
                details["runtime_cache"] = "pending: the engines' contexts are created on the first call"
            elif cache.loaded:
                details["runtime_cache"] = "hit"
            else:
                details["runtime_cache"] = "miss: TensorRT-RTX refused the cache's contents"
        return details

    def runtime_cache_bytes(self, module: nn.Module) -> bytes | None:
        cache = getattr(module, LOAD_DETAILS, {}).get("_cache")
        if cache is None:
            return None
        return cache.serialize() or None

    def apply_policy(
        self, module: nn.Module, policy: RuntimeConfig, previous: RuntimeConfig | None = None
    ) -> PolicyReport:
        runners = find_engines(module, rtx_runner.is_runner)
        if runners:
            return _apply_to_runners(runners, policy, previous)
        reason = getattr(module, LOAD_DETAILS, {}).get("reason", "")
        if refused := rtx_settings_refused(
            policy, f"this model's engines run on the {CPP_RUNTIME} ({reason})"
        ):
            raise refused
        engines = find_engines(module)
        readback = apply_to_engines(engines, policy, previous)
        return PolicyReport(
            policy=policy,
            applied=True,
            engines_configured=len(engines),
            details={"engines": readback, "cuda_graphs": policy.cuda_graphs, "runner": CPP_RUNTIME},
        )

    def call_context(self, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        return CUDA_GRAPHS_GATE.call(policy.cuda_graphs)

    def call_context_for(self, module: nn.Module, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        # The own runner keeps its CUDA graphs itself: no process-wide mode to share.
        if find_engines(module, rtx_runner.is_runner):
            return nullcontext()
        return self.call_context(policy)

    def hold_resources(self, module: nn.Module, policy: RuntimeConfig) -> AbstractContextManager[Any]:
        if runners := find_engines(module, rtx_runner.is_runner):
            return _runner_memory_held(runners)
        return resources_held(find_engines(module), policy)


def _apply_to_runners(
    runners: list[EngineRef], policy: RuntimeConfig, previous: RuntimeConfig | None
) -> PolicyReport:
    """Configure every runner for ``policy``; all or nothing, as :func:`apply_to_engines`."""
    settings = rtx_runner.RunnerSettings.from_policy(policy)
    configured: list[EngineRef] = []
    try:
        for ref in runners:
            configured.append(ref)
            ref.engine.configure(settings)
    except BaseException:
        if previous is not None:
            for ref in configured:
                ref.engine.configure(rtx_runner.RunnerSettings.from_policy(previous))
        raise
    return PolicyReport(
        policy=policy,
        applied=True,
        engines_configured=len(runners),
        details={"runner": OWN_RUNNER, "engines": {ref.path: str(settings) for ref in runners}},
    )


@contextmanager
def _runner_memory_held(runners: list[EngineRef]) -> Iterator[None]:
    try:
        for ref in runners:
            ref.engine.hold_memory(True)
        yield
    finally:
        for ref in runners:
            ref.engine.hold_memory(False)
