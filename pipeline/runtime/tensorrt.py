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
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import BackendUnavailableError, ConfigError
from pipeline.runtime import rtx_runner
from pipeline.runtime.base import FileSource, ModelRuntime, SavedArtifact
from pipeline.runtime.compat import HostKey, version_tuple
from pipeline.runtime.engine_graph import EngineRecord, attach_engines, escaping_engines, load_graph
from pipeline.runtime.engine_layout import check_engine_layout, requires_output_allocator
from pipeline.runtime.engines import EngineRef, ModeGate, apply_to_engines, find_engines, resources_held
from pipeline.runtime.executor import (
    CacheState,
    CacheStatus,
    EngineExecutor,
    LoadedArtifact,
    RunnerKind,
)
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
#: How load reports name the two runners (``load_report["engines"]["runner"]``).
OWN_RUNNER = RunnerKind.rtx.value
CPP_RUNTIME = RunnerKind.cpp.value

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
    fingerprint = {
        HostKey.torch: torch.__version__,
        HostKey.torch_tensorrt: torch_tensorrt_version,
        HostKey.torch_tensorrt_abi: str(torch.ops.tensorrt.ABI_VERSION()),
        HostKey.tensorrt: tensorrt[1] if tensorrt else "unknown",
        HostKey.tensorrt_build: build,
        HostKey.cuda: str(torch.version.cuda),
        HostKey.gpu: torch.cuda.get_device_name(device),
        HostKey.sm: f"{major}.{minor}",
        HostKey.platform: platform.machine(),
    }
    return {key.value: value for key, value in fingerprint.items()}


def make_engine(record: EngineRecord, engine_bytes: bytes) -> Any:
    """A ``torch.classes.tensorrt.Engine`` built from its raw bytes and recorded fields (whose
    layout :func:`~pipeline.runtime.engine_layout.check_engine_layout` has checked)."""
    return torch.classes.tensorrt.Engine(record.constructor_args(engine_bytes))


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
    build = environment.get(HostKey.tensorrt_build.value, "unknown")
    if build != RTX_BUILD:
        why = f"this host's TensorRT is {build}, not TensorRT-RTX"
        if refused := rtx_settings_refused(policy, why):
            raise refused
        return False, "standard TensorRT engines"
    version = environment.get(HostKey.torch_tensorrt.value, "unknown")
    if version_tuple(version) >= NATIVE_RUNTIME_CONFIG:
        # Not wired yet: the C++ runtime of 2.13+ takes these settings itself (see README).
        if refused := rtx_settings_refused(
            policy, f"Torch-TensorRT {version}'s runtime settings are not wired"
        ):
            raise refused
        return False, f"Torch-TensorRT {version} (runtime settings through its own API: not wired yet)"
    if policy.runtime_cache is RuntimeCacheMode.off and set(policy.rtx_settings()) <= {"runtime_cache"}:
        return False, "runtime.runtime_cache=off and no TensorRT-RTX setting"
    if dependent := [r.attribute for r in artifact.engines if requires_output_allocator(r.serialized_info)]:
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
) -> CacheState | None:
    """Why the bundle's runtime cache is not used here (a miss), or None when it is handed to
    TensorRT-RTX (which may still refuse its contents)."""
    if policy.runtime_cache is RuntimeCacheMode.off:
        return CacheState(CacheStatus.miss, "runtime.runtime_cache=off")
    if not artifact.runtime_cache:
        return CacheState(CacheStatus.miss, "the bundle has no runtime cache")
    if mismatch := rtx_runner.cache_mismatch(artifact.runtime_cache_key, environment):
        return CacheState(CacheStatus.miss, mismatch)
    return None


class CppEngines(EngineExecutor):
    """Engines run by Torch-TensorRT's C++ runtime (``torch.classes.tensorrt.Engine`` objects,
    wherever they hang in the module), configured at engine level."""

    runner = RunnerKind.cpp

    def __init__(self, engines: list[EngineRef], reason: str, cache_reason: str) -> None:
        super().__init__(reason)
        self.engines = engines
        self._cache_reason = cache_reason

    def configure(self, policy: RuntimeConfig, previous: RuntimeConfig | None = None) -> PolicyReport:
        if refused := rtx_settings_refused(
            policy, f"this model's engines run on the {self.runner.value} ({self.reason})"
        ):
            raise refused
        readback = apply_to_engines(self.engines, policy, previous)
        self._policy = policy
        return PolicyReport(
            policy=policy,
            applied=True,
            engines_configured=len(self.engines),
            details={"engines": readback, "cuda_graphs": policy.cuda_graphs, "runner": self.runner.value},
        )

    def call_context(self) -> AbstractContextManager[Any]:
        return CUDA_GRAPHS_GATE.call(self._policy.cuda_graphs)

    def hold_memory(self) -> AbstractContextManager[Any]:
        return resources_held(self.engines, self._policy)

    def cache_state(self) -> CacheState:
        return CacheState(CacheStatus.not_used, self._cache_reason)

    def engine_objects(self) -> dict[str, Any]:
        return {ref.path: ref.engine for ref in self.engines}


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
    ) -> LoadedArtifact:
        """Deserialize the graph and its engines onto ``device`` (an indexed CUDA device): the
        runtime places an engine on the current device when that one is compatible.

        TensorRT-RTX engines run through :mod:`pipeline.runtime.rtx_runner` where
        :func:`choose_runner` says so; the executor tells which runner and whether the bundle's
        runtime cache was used."""
        policy = policy or RuntimeConfig()
        environment = runtime_environment(device)
        # Imported, not just found: bindings that are present but fail to import (another CUDA,
        # missing libraries) leave the engines to the C++ runtime instead of failing the load.
        rtx = environment.get(HostKey.tensorrt_build.value) == RTX_BUILD
        importable = rtx and _imports(rtx_runner.tensorrt_rtx)
        own, reason = choose_runner(environment, policy, artifact, importable)
        if own:
            return rtx_runner.load_with_runner(
                artifact, files, device, policy, reason, cache_decision(artifact, environment, policy)
            )
        module = self._load_cpp(artifact, files, device)
        cache = reason if rtx else "standard TensorRT"
        return LoadedArtifact(module, CppEngines(find_engines(module), reason, cache))

    def executor(self, module: nn.Module) -> EngineExecutor:
        return CppEngines(
            find_engines(module), "compiled in this process", "a module compiled in this process"
        )

    def _load_cpp(self, artifact: SavedArtifact, files: FileSource, device: torch.device) -> nn.Module:
        """The engines as Torch-TensorRT's C++ runtime objects (what refit works on)."""
        load_runtime()
        check_engine_layout(artifact.engines)
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
