"""Our own engine runner over TensorRT-RTX's Python bindings, for what Torch-TensorRT 2.11 lacks.

TensorRT-RTX compiles its kernels when an execution context is created (seconds for BERT-base);
a runtime cache from an earlier process spares that (a tenth of a second). Torch-TensorRT's C++
runtime takes a runtime config, and with it a cache, only from 2.13 on. Where the installed
Torch-TensorRT is older, a TensorRT-RTX bundle's engines run here instead: each slot of the
format-2 graph calls :func:`execute_rtx` ``(inputs, runner)`` where it would call
``torch.ops.tensorrt.execute_engine(inputs, engine)``.

A runner follows Torch-TensorRT's Python runtime (``_PythonTorchTensorRTModule.py``, 2.11): set
each input's shape and address, allocate outputs with torch at the shapes the context reports,
``execute_async_v3`` on torch's current stream (on a side stream of its own, ordered both ways,
when the caller is on the legacy default stream). On top of it, per policy:

* pre-allocated outputs: the next call's outputs are allocated at the end of a call, at its
  shapes, on its stream; every call still returns tensors of its own;
* dynamic allocation: the context's execution memory comes from torch's caching allocator per
  call (``USER_MANAGED``), sized for the call's shapes, and is released after it;
* CUDA graphs: one ``torch.cuda.CUDAGraph``, recorded again when the input shapes change,
  captured on a side stream after one uncaptured run, replayed with inputs copied into its static
  buffers and its outputs copied out into tensors of the call's own (allocated at the end of the
  call before, with pre-allocated outputs);
* TensorRT-RTX's own settings: kernel specialization, its CUDA-graph strategy, the runtime cache
  shared by every engine of a model.

``tensorrt_rtx`` is imported lazily and only here; nothing imports ``torch_tensorrt``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from pipeline.errors import BackendUnavailableError, BundleError
from pipeline.runtime.base import FileSource, SavedArtifact
from pipeline.runtime.compat import RUNTIME_CACHE_KEYS
from pipeline.runtime.engine_graph import attach_engines, load_graph
from pipeline.runtime.engine_layout import LAYOUT, binding_names, check_engine_layout
from pipeline.runtime.executor import CacheState, CacheStatus, EngineExecutor, LoadedArtifact, RunnerKind
from pipeline.runtime.policy import (
    KernelSpecialization,
    PolicyReport,
    RtxCudaGraphs,
    RuntimeCacheMode,
    RuntimeConfig,
)

RTX_MODULE = "tensorrt_rtx"

_import_lock = threading.Lock()
#: The input shapes of one call, in binding order.
Signature = tuple[tuple[int, ...], ...]


def tensorrt_rtx() -> ModuleType:
    """The TensorRT-RTX Python bindings, imported on first use."""
    with _import_lock:
        try:
            return importlib.import_module(RTX_MODULE)
        except (ImportError, OSError) as exc:
            raise BackendUnavailableError(
                f"TensorRT-RTX runtime settings need its Python bindings ({RTX_MODULE}): {exc}"
            ) from None


def current_stream(device: torch.device) -> Any:
    """Torch's current stream on ``device`` (calls run on it)."""
    return torch.cuda.current_stream(device)


def new_stream(device: torch.device) -> Any:
    """A new side stream on ``device``."""
    return torch.cuda.Stream(device)


def default_stream_handle(device: torch.device) -> int:
    """The handle of the legacy default stream of ``device``."""
    return int(torch.cuda.default_stream(device).cuda_stream)


def new_event() -> Any:
    """A CUDA event (created on the device of the stream it is first recorded on)."""
    return torch.cuda.Event()


def on_device(device: torch.device) -> AbstractContextManager[Any]:
    """Make ``device`` current for the block (CUDA devices; a no-op otherwise)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def cache_key(environment: Mapping[str, str]) -> dict[str, str]:
    """The key a runtime cache made on a host with ``environment`` is filed under."""
    return {key.value: str(environment.get(key.value, "unknown")) for key in RUNTIME_CACHE_KEYS}


def cache_mismatch(recorded: Mapping[str, str], host: Mapping[str, str]) -> str:
    """Why a cache filed under ``recorded`` does not apply on ``host`` ('' when it does)."""
    wanted = cache_key(host)
    differing = [
        f"{name} {recorded.get(name)!r} here {wanted[name]!r}"
        for name in wanted
        if recorded.get(name) != wanted[name]
    ]
    return ("cache made for " + ", ".join(differing)) if differing else ""


@dataclass(frozen=True)
class RunnerSettings:
    """What a runner is configured with: the parts of a policy that concern one engine."""

    pre_allocated_outputs: bool = False
    dynamic_allocation: bool = False
    cuda_graphs: bool = False
    kernel_specialization: KernelSpecialization | None = None
    rtx_cuda_graphs: RtxCudaGraphs | None = None
    use_cache: bool = True

    @classmethod
    def from_policy(cls, policy: RuntimeConfig) -> RunnerSettings:
        """The runner settings of ``policy``."""
        return cls(
            pre_allocated_outputs=policy.pre_allocated_outputs,
            dynamic_allocation=policy.dynamic_allocation,
            cuda_graphs=policy.cuda_graphs,
            kernel_specialization=policy.kernel_specialization,
            rtx_cuda_graphs=policy.rtx_cuda_graphs,
            use_cache=policy.runtime_cache is not RuntimeCacheMode.off,
        )

    def context_key(self) -> tuple[Any, ...]:
        """The settings baked into an execution context: a change needs a new one."""
        return (self.dynamic_allocation, self.kernel_specialization, self.rtx_cuda_graphs, self.use_cache)


class SharedRuntimeCache:
    """One TensorRT-RTX runtime cache for every engine of a loaded model.

    Created from the first engine's runtime config (as Torch-TensorRT 2.14 does), filled from the
    bundle's verified bytes if the bundle has a cache for this host; its contents are read back
    only by the build's verify stage (:meth:`serialize`), never written anywhere at call time.
    """

    def __init__(self, data: bytes | None) -> None:
        self._data = data
        self._cache: Any = None
        self.loaded: bool | None = None  # whether TensorRT-RTX accepted ``data`` (None: no data)
        self._lock = threading.Lock()

    def attach(self, config: Any) -> None:
        """Set the cache on a runtime ``config`` (creating it from the first config)."""
        with self._lock:
            if self._cache is None:
                self._cache = config.create_runtime_cache()
                if self._data:
                    self.loaded = bool(self._cache.deserialize(self._data))
                self._data = None
            config.set_runtime_cache(self._cache)

    def serialize(self) -> bytes:
        """The cache's contents (empty before any engine set it up)."""
        with self._lock:
            if self._cache is None:
                return b""
            return bytes(memoryview(self._cache.serialize()))


class RtxEngineRunner:
    """Runs one TensorRT-RTX engine: the object a format-2 graph slot holds in place of a
    ``torch.classes.tensorrt.Engine``. Calls come serialized by :class:`LoadedModel`."""

    def __init__(
        self,
        engine: Any,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: torch.device,
        cache: SharedRuntimeCache | None,
        name: str = "",
        settings: RunnerSettings | None = None,
        lazy: bool = False,
        keep_alive: Any = None,
    ) -> None:
        self.trt = tensorrt_rtx()
        self._keep_alive = keep_alive  # the TensorRT runtime: it must outlive its engine
        self.engine = engine
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = device
        self.cache = cache
        self.settings = settings or RunnerSettings()
        self.context: Any = None
        self._context_key: tuple[Any, ...] | None = None
        self._output_dtypes = [self._torch_dtype(n) for n in self.output_names]
        self._input_dtypes = [self._torch_dtype(n) for n in self.input_names]
        self._next_outputs: tuple[Signature, int, list[torch.Tensor]] | None = None
        self._graphs: dict[Signature, _CapturedCall] = {}
        self._side_stream: Any = None
        self._default_stream: int | None = None  # the legacy default stream's handle, once known
        # Set again only on change: what the context holds since the last call (binding calls cost
        # host time, and a call that launches ~100 kernels is bound by the host's launch rate).
        self._bound_shapes: Signature | None = None
        self._bound_addresses: dict[str, int] = {}
        self._output_shapes: tuple[Signature, list[tuple[int, ...]]] | None = None
        # Reused call after call (calls come one at a time): the side stream's order both ways.
        self._caller_ready: Any = None
        self._launched: Any = None
        self._hold_memory = False
        self._held_memory: torch.Tensor | None = None
        if not lazy:
            self._ensure_context()

    # -- configuration ---------------------------------------------------------------------
    def configure(self, settings: RunnerSettings) -> None:
        """Switch to ``settings``: a new execution context when a setting baked into it changed;
        captured graphs and pre-allocated outputs are dropped either way."""
        rebuild = self.context is not None and settings.context_key() != self._context_key
        self.settings = settings
        self._graphs.clear()
        self._next_outputs = None
        self._held_memory = None
        self._forget_bindings()
        if rebuild:
            self.context = None
            self._ensure_context()

    def _forget_bindings(self) -> None:
        self._bound_shapes = None
        self._bound_addresses.clear()
        self._output_shapes = None

    def hold_memory(self, held: bool) -> None:
        """Keep the execution memory of dynamic allocation between calls (``hold_resources``)."""
        self._hold_memory = held
        if not held:
            self._held_memory = None

    def _ensure_context(self) -> Any:
        if self.context is not None:
            return self.context
        trt, settings = self.trt, self.settings
        config = self.engine.create_runtime_config()
        if self.cache is not None and settings.use_cache:
            self.cache.attach(config)
        if settings.kernel_specialization is not None:
            strategy = trt.DynamicShapesKernelSpecializationStrategy
            config.dynamic_shapes_kernel_specialization_strategy = getattr(
                strategy, settings.kernel_specialization.value.upper()
            )
        if settings.rtx_cuda_graphs is not None:
            config.cuda_graph_strategy = getattr(
                trt.CudaGraphStrategy, settings.rtx_cuda_graphs.value.upper()
            )
        if settings.dynamic_allocation:
            config.set_execution_context_allocation_strategy(
                trt.ExecutionContextAllocationStrategy.USER_MANAGED
            )
        with on_device(self.device):
            context = self.engine.create_execution_context(config)
        if context is None:
            raise BundleError(f"engine {self.name}: TensorRT-RTX could not create an execution context")
        self.context, self._context_key = context, settings.context_key()
        self._forget_bindings()
        return context

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt_dtype = self.engine.get_tensor_dtype(name)
        try:
            return _TORCH_DTYPES[str(trt_dtype).rsplit(".", 1)[-1]]
        except KeyError:
            raise BundleError(
                f"engine {self.name}: tensor {name!r} has unsupported dtype {trt_dtype}"
            ) from None

    # -- calls -----------------------------------------------------------------------------
    def execute(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run the engine on ``inputs`` (in binding order) on torch's current stream; the
        returned tensors belong to the caller."""
        if len(inputs) != len(self.input_names):
            raise RuntimeError(
                f"engine {self.name}: {len(inputs)} inputs given, it takes {len(self.input_names)}"
            )
        context = self._ensure_context()
        tensors = [
            t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()
            for t, dtype in zip(inputs, self._input_dtypes, strict=True)
        ]
        signature = tuple(tuple(t.shape) for t in tensors)
        caller = current_stream(self.device)
        if self.settings.cuda_graphs:
            return self._replay(context, tensors, signature, caller)
        self._bind_inputs(context, tensors, signature)
        outputs = self._outputs_for(context, signature, caller)
        self._bind_outputs(context, outputs)
        memory = self._device_memory(context) if self.settings.dynamic_allocation else None
        stream = self._launch_stream(caller)
        if stream is not caller:
            self._caller_ready.record(caller)
            stream.wait_event(self._caller_ready)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"engine {self.name}: execute_async_v3 failed")
        if stream is not caller:
            self._launched.record(stream)
            caller.wait_event(self._launched)
        del memory  # freed on the caller's stream, which now waits for the launch
        if self.settings.pre_allocated_outputs:
            # At the shapes known since the bind: asking the context now could wait for the launch.
            self._next_outputs = (
                signature,
                caller.cuda_stream,
                self._allocate(self._shapes_of(context, signature)),
            )
        return outputs

    def _bind_inputs(self, context: Any, inputs: Sequence[torch.Tensor], signature: Signature) -> None:
        if signature != self._bound_shapes:
            self._bound_shapes = None  # until every input shape is set
            for name, shape in zip(self.input_names, signature, strict=True):
                if not context.set_input_shape(name, shape):
                    raise RuntimeError(
                        f"engine {self.name}: input {name!r} of shape {shape} is outside the shapes "
                        "the engine was built for"
                    )
            self._bound_shapes = signature
        for name, tensor in zip(self.input_names, inputs, strict=True):
            self._bind(context, name, tensor)

    def _bind_outputs(self, context: Any, outputs: Sequence[torch.Tensor]) -> None:
        for name, tensor in zip(self.output_names, outputs, strict=True):
            self._bind(context, name, tensor)

    def _bind(self, context: Any, name: str, tensor: torch.Tensor) -> None:
        address = tensor.data_ptr()
        if self._bound_addresses.get(name) == address:
            return
        self._bound_addresses.pop(name, None)
        if not context.set_tensor_address(name, address):
            raise RuntimeError(f"engine {self.name}: TensorRT-RTX refused the address of tensor {name!r}")
        self._bound_addresses[name] = address

    def _launch_stream(self, caller: Any) -> Any:
        # TensorRT synchronizes around launches on the legacy default stream: use a side stream.
        if self._default_stream is None:
            self._default_stream = default_stream_handle(self.device)
        if caller.cuda_stream != self._default_stream:
            return caller
        if self._side_stream is None:
            self._side_stream = new_stream(self.device)
            self._caller_ready, self._launched = new_event(), new_event()
        return self._side_stream

    def _outputs_for(
        self, context: Any, signature: Signature, caller: torch.cuda.Stream
    ) -> list[torch.Tensor]:
        ahead = self._take_outputs_ahead(signature, caller)
        return ahead if ahead is not None else self._allocate(self._shapes_of(context, signature))

    def _take_outputs_ahead(
        self, signature: Signature, caller: torch.cuda.Stream
    ) -> list[torch.Tensor] | None:
        """The outputs the call before allocated ahead, if they fit this call (dropped either way)."""
        ahead, self._next_outputs = self._next_outputs, None
        # Allocated ahead on the caller's stream at these shapes: safe to hand out on that stream.
        if ahead is not None and ahead[0] == signature and ahead[1] == caller.cuda_stream:
            return ahead[2]
        return None

    def _shapes_of(self, context: Any, signature: Signature) -> list[tuple[int, ...]]:
        """The output shapes for input shapes ``signature`` (bound on ``context`` when not known)."""
        known = self._output_shapes
        if known is not None and known[0] == signature:
            return known[1]
        shapes = []
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(
                    f"engine {self.name}: output {name!r} has a data-dependent shape {shape}; "
                    "such engines run on Torch-TensorRT's C++ runtime"
                )
            shapes.append(shape)
        self._output_shapes = (signature, shapes)
        return shapes

    def _allocate(self, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        return [
            torch.empty(shape, dtype=dtype, device=self.device)
            for shape, dtype in zip(shapes, self._output_dtypes, strict=True)
        ]

    def _device_memory(self, context: Any) -> torch.Tensor:
        size = int(context.update_device_memory_size_for_shapes())
        held = self._held_memory
        memory = held if held is not None and held.numel() >= size else None
        if memory is None:
            memory = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)
        context.set_device_memory(memory.data_ptr(), size)
        self._held_memory = memory if self._hold_memory else None
        return memory

    def _replay(
        self,
        context: Any,
        inputs: list[torch.Tensor],
        signature: Signature,
        caller: torch.cuda.Stream,
    ) -> list[torch.Tensor]:
        captured = self._graphs.get(signature)
        if captured is None:
            # One graph at a time, recorded again when the shapes change (as Torch-TensorRT does):
            # graphs kept per shape would grow without bound under dynamic shapes, and all of them
            # would share the one execution context, whose shapes the last capture set.
            self._graphs.clear()
            captured = self._capture(context, inputs, caller)
            self._graphs[signature] = captured
        # One launch each way for all tensors (foreach), the replay between: the host's launches
        # before the replay are what a call waits for, the GPU's replay is the floor.
        torch._foreach_copy_(captured.inputs, inputs)
        captured.graph.replay()  # on the caller's current stream
        outputs = self._take_outputs_ahead(signature, caller) or self._empty_like(captured.outputs)
        torch._foreach_copy_(outputs, captured.outputs)
        if self.settings.pre_allocated_outputs:
            # After the launches, while the GPU replays: the next call's outputs cost it nothing.
            self._next_outputs = (signature, caller.cuda_stream, self._empty_like(captured.outputs))
        return outputs

    @staticmethod
    def _empty_like(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.empty_like(t) for t in tensors]

    def _capture(self, context: Any, inputs: list[torch.Tensor], caller: torch.cuda.Stream) -> _CapturedCall:
        static_inputs = [t.clone() for t in inputs]
        signature = tuple(tuple(t.shape) for t in static_inputs)
        self._bind_inputs(context, static_inputs, signature)
        static_outputs = self._allocate(self._shapes_of(context, signature))
        self._bind_outputs(context, static_outputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            # One uncaptured run first: kernels that compile or memory set up on first use must
            # not happen inside the capture.
            if not context.execute_async_v3(side.cuda_stream):
                raise RuntimeError(f"engine {self.name}: execute_async_v3 failed")
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' models keep running while this one records.
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            if not context.execute_async_v3(side.cuda_stream):
                raise RuntimeError(f"engine {self.name}: execute_async_v3 failed during capture")
        caller.wait_stream(side)
        return _CapturedCall(graph, static_inputs, static_outputs)


@dataclass
class _CapturedCall:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "FP8": torch.float8_e4m3fn,
}


def execute_rtx(inputs: list[torch.Tensor], runner: RtxEngineRunner) -> list[torch.Tensor]:
    """The graph's call of one engine through its runner (``execute_engine``'s signature)."""
    return runner.execute(inputs)


def make_runner(
    serialized_info: Sequence[str],
    engine_bytes: bytes,
    device: torch.device,
    cache: SharedRuntimeCache | None,
    name: str,
    settings: RunnerSettings,
    lazy: bool = False,
) -> RtxEngineRunner:
    """Deserialize one engine with TensorRT-RTX and wrap it in a runner."""
    trt = tensorrt_rtx()
    with on_device(device):
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BundleError(f"engine {name}: TensorRT-RTX could not deserialize it")
    inputs = binding_names(serialized_info, LAYOUT.input_binding_names)
    outputs = binding_names(serialized_info, LAYOUT.output_binding_names)
    if not outputs:
        raise BundleError(f"engine {name}: its record names no output bindings")
    return RtxEngineRunner(
        engine, inputs, outputs, device, cache, name=name, settings=settings, lazy=lazy, keep_alive=runtime
    )


class RtxRunners(EngineExecutor):
    """A loaded model's engines run by :class:`RtxEngineRunner` s, with one runtime cache."""

    runner = RunnerKind.rtx

    def __init__(
        self,
        runners: dict[str, RtxEngineRunner],
        cache: SharedRuntimeCache,
        reason: str,
        cache_miss: CacheState | None,
        policy: RuntimeConfig,
    ) -> None:
        super().__init__(reason)
        self.runners = runners
        self.cache = cache
        self._cache_miss = cache_miss  # decided before any engine ran (None: handed to TensorRT-RTX)
        self._policy = policy

    def configure(self, policy: RuntimeConfig, previous: RuntimeConfig | None = None) -> PolicyReport:
        settings = RunnerSettings.from_policy(policy)
        configured: list[RtxEngineRunner] = []
        try:
            for runner in self.runners.values():
                configured.append(runner)
                runner.configure(settings)
        except BaseException:
            if previous is not None:
                for runner in configured:
                    runner.configure(RunnerSettings.from_policy(previous))
            raise
        self._policy = policy
        return PolicyReport(
            policy=policy,
            applied=True,
            engines_configured=len(self.runners),
            details={"runner": self.runner.value, "engines": {name: str(settings) for name in self.runners}},
        )

    @contextmanager
    def hold_memory(self) -> Iterator[None]:
        try:
            for runner in self.runners.values():
                runner.hold_memory(True)
            yield
        finally:
            for runner in self.runners.values():
                runner.hold_memory(False)

    def cache_state(self) -> CacheState:
        if self._cache_miss is not None:
            return self._cache_miss
        if self.cache.loaded is None:
            return CacheState(CacheStatus.pending, "the engines' contexts are created on the first call")
        if self.cache.loaded:
            return CacheState(CacheStatus.hit)
        return CacheState(CacheStatus.miss, "TensorRT-RTX refused the cache's contents")

    def cache_bytes(self) -> bytes | None:
        return self.cache.serialize() or None

    def engine_objects(self) -> dict[str, Any]:
        return dict(self.runners)


def load_with_runner(
    artifact: SavedArtifact,
    files: FileSource,
    device: torch.device,
    policy: RuntimeConfig,
    reason: str,
    cache_miss: CacheState | None,
) -> LoadedArtifact:
    """The saved graph with each engine slot calling a runner (``cache_miss``: why the bundle's
    runtime cache is not used here, None to hand it to TensorRT-RTX)."""
    data = files.read(artifact.runtime_cache) if cache_miss is None and artifact.runtime_cache else None
    # Kept also under runtime_cache=off: set_runtime may switch it on (with an empty cache).
    cache = SharedRuntimeCache(data)
    settings = RunnerSettings.from_policy(policy)
    check_engine_layout(artifact.engines)
    with torch.cuda.device(device):
        module = load_graph(files.read(artifact.model_file), device)
        runners = {
            record.attribute: make_runner(
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
        attach_engines(module, runners, execute_rtx)
    return LoadedArtifact(module, RtxRunners(runners, cache, reason, cache_miss, policy))
