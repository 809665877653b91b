"""The own TensorRT-RTX engine runner's logic, the runner choice and the new policy fields.

A fake ``tensorrt_rtx`` module records what the runner asks of TensorRT-RTX (binding order,
shapes, addresses, streams, runtime configs); tests/gpu/test_rtx_runner.py runs the real one.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from enum import Enum
from typing import Any

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.runtime import rtx_runner
from pipeline.runtime.base import SavedArtifact
from pipeline.runtime.engine_graph import EngineRecord
from pipeline.runtime.executor import CacheState, CacheStatus
from pipeline.runtime.format import Manifest
from pipeline.runtime.policy import (
    PRESETS,
    KernelSpecialization,
    RtxCudaGraphs,
    RuntimeCacheMode,
    RuntimeConfig,
    as_policy,
)
from pipeline.runtime.rtx_runner import RunnerSettings, SharedRuntimeCache
from pipeline.runtime.tensorrt import cache_decision, choose_runner, rtx_settings_refused

CPU = torch.device("cpu")
HOST = {"tensorrt_build": "tensorrt-rtx", "tensorrt": "1.4.0.76", "cuda": "13.0", "sm": "9.0"}
HOST_211 = {**HOST, "torch_tensorrt": "2.11.0"}


class DataType(Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3


class Strategy(Enum):
    LAZY = "lazy"
    EAGER = "eager"
    NONE = "none"


class GraphStrategy(Enum):
    DISABLED = "disabled"
    WHOLE_GRAPH_CAPTURE = "whole"


class Allocation(Enum):
    STATIC = 0
    USER_MANAGED = 2


class FakeCache:
    def __init__(self) -> None:
        self.deserialized: list[bytes] = []

    def deserialize(self, data: bytes) -> bool:
        self.deserialized.append(data)
        return data == b"good"

    def serialize(self) -> bytes:
        return b"kernels"


class FakeConfig:
    def __init__(self) -> None:
        self.cache: FakeCache | None = None
        self.allocation = Allocation.STATIC
        self.dynamic_shapes_kernel_specialization_strategy = Strategy.LAZY
        self.cuda_graph_strategy = GraphStrategy.DISABLED

    def create_runtime_cache(self) -> FakeCache:
        return FakeCache()

    def set_runtime_cache(self, cache: FakeCache) -> None:
        self.cache = cache

    def set_execution_context_allocation_strategy(self, strategy: Allocation) -> None:
        self.allocation = strategy


class FakeContext:
    """Computes each output's shape as its first input's shape (an elementwise engine)."""

    def __init__(self, engine: FakeEngine, config: FakeConfig) -> None:
        self.engine, self.config = engine, config
        self.calls: list[tuple[Any, ...]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("shape", name, shape))
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.calls.append(("address", name, address))
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.engine.inputs[0]]

    def update_device_memory_size_for_shapes(self) -> int:
        return 64

    def set_device_memory(self, address: int, size: int) -> None:
        self.calls.append(("memory", size))

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append(("execute", stream))
        return True


class FakeEngine:
    def __init__(self, inputs: list[str], outputs: list[str]) -> None:
        self.inputs, self.outputs = inputs, outputs
        self.contexts: list[FakeContext] = []

    def create_runtime_config(self) -> FakeConfig:
        return FakeConfig()

    def create_execution_context(self, config: FakeConfig) -> FakeContext:
        context = FakeContext(self, config)
        self.contexts.append(context)
        return context

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.INT32 if name.startswith("ids") else DataType.FLOAT


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle
        self.waited: list[int] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waited.append(other.cuda_stream)

    def wait_event(self, event: FakeEvent) -> None:
        assert event.stream is not None, "waited for an event never recorded"
        self.waited.append(event.stream.cuda_stream)


class FakeEvent:
    def __init__(self) -> None:
        self.stream: FakeStream | None = None

    def record(self, stream: FakeStream) -> None:
        self.stream = stream


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """A fake ``tensorrt_rtx`` module and fake streams (the current one: handle 7)."""
    engines: list[FakeEngine] = []

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            engine = FakeEngine(*(json.loads(data)))
            engines.append(engine)
            return engine

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    module = types.ModuleType("tensorrt_rtx")
    module.Runtime = Runtime  # type: ignore[attr-defined]
    module.Logger = Logger  # type: ignore[attr-defined]
    module.DynamicShapesKernelSpecializationStrategy = Strategy  # type: ignore[attr-defined]
    module.CudaGraphStrategy = GraphStrategy  # type: ignore[attr-defined]
    module.ExecutionContextAllocationStrategy = Allocation  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", module)
    streams = types.SimpleNamespace(
        current=FakeStream(7), default=FakeStream(0), side=FakeStream(9), engines=engines
    )
    monkeypatch.setattr(rtx_runner, "current_stream", lambda device: streams.current)
    monkeypatch.setattr(rtx_runner, "default_stream_handle", lambda device: streams.default.cuda_stream)
    monkeypatch.setattr(rtx_runner, "new_stream", lambda device: streams.side)
    monkeypatch.setattr(rtx_runner, "new_event", FakeEvent)
    yield streams


DEFAULT = RunnerSettings()


def runner(
    settings: RunnerSettings = DEFAULT,
    cache: SharedRuntimeCache | None = None,
    lazy: bool = False,
    inputs: tuple[str, ...] = ("ids", "mask"),
) -> rtx_runner.RtxEngineRunner:
    info = ["8", "name", "0", "", "%".join(inputs), "out0%out1", "0", "", "", "0", "0"]
    data = json.dumps([list(inputs), ["out0", "out1"]]).encode()
    return rtx_runner.make_runner(info, data, CPU, cache, "_run_on_acc_0_engine", settings, lazy=lazy)


def inputs() -> list[torch.Tensor]:
    return [torch.ones(2, 5, dtype=torch.int32), torch.zeros(2, 5)]


def test_runner_sets_shapes_and_addresses_in_binding_order_when_called(fake_trt: Any) -> None:
    run = runner()
    given = inputs()
    outputs = rtx_runner.execute_rtx(given, run)
    context = fake_trt.engines[0].contexts[0]
    assert [c[:2] for c in context.calls[:4]] == [
        ("shape", "ids"),
        ("shape", "mask"),
        ("address", "ids"),
        ("address", "mask"),
    ]
    assert context.calls[0][2] == (2, 5) and context.calls[2][2] == given[0].data_ptr()
    addresses = {c[1]: c[2] for c in context.calls if c[0] == "address"}
    assert addresses["out0"] == outputs[0].data_ptr() and addresses["out1"] == outputs[1].data_ptr()
    assert [tuple(o.shape) for o in outputs] == [(2, 5), (2, 5)]
    assert context.calls[-1] == ("execute", 7)  # on the caller's current stream


def test_runner_converts_inputs_to_contiguous_engine_dtypes_when_given_others(fake_trt: Any) -> None:
    run = runner()
    ids = torch.ones(5, 2, dtype=torch.int64).t()  # wrong dtype, not contiguous
    run.execute([ids, torch.zeros(2, 5)])
    context = fake_trt.engines[0].contexts[0]
    bound = next(c[2] for c in context.calls if c[:2] == ("address", "ids"))
    assert bound != ids.data_ptr()


def test_runner_launches_on_a_side_stream_ordered_both_ways_when_caller_is_on_the_default_stream(
    fake_trt: Any,
) -> None:
    fake_trt.current = fake_trt.default
    run = runner()
    run.execute(inputs())
    assert fake_trt.engines[0].contexts[0].calls[-1] == ("execute", 9)
    assert fake_trt.side.waited == [0] and fake_trt.current.waited == [9]


def test_runner_returns_new_outputs_every_call_when_outputs_are_pre_allocated(fake_trt: Any) -> None:
    run = runner(RunnerSettings(pre_allocated_outputs=True))
    first = run.execute(inputs())
    second = run.execute(inputs())
    assert first[0].data_ptr() != second[0].data_ptr()
    assert run._next_outputs is not None and run._next_outputs[2][0].data_ptr() not in (
        first[0].data_ptr(),
        second[0].data_ptr(),
    )


def test_runner_allocates_afresh_when_pre_allocated_outputs_were_made_on_another_stream(
    fake_trt: Any,
) -> None:
    run = runner(RunnerSettings(pre_allocated_outputs=True))
    run.execute(inputs())
    ahead = run._next_outputs
    assert ahead is not None
    fake_trt.current = FakeStream(8)
    outputs = run.execute(inputs())
    assert outputs[0].data_ptr() != ahead[2][0].data_ptr()


def test_runner_gives_the_context_user_managed_memory_per_call_when_dynamic_allocation(
    fake_trt: Any,
) -> None:
    run = runner(RunnerSettings(dynamic_allocation=True))
    run.execute(inputs())
    context = fake_trt.engines[0].contexts[0]
    assert context.config.allocation is Allocation.USER_MANAGED
    assert ("memory", 64) in context.calls
    assert context.calls.index(("memory", 64)) < context.calls.index(("execute", 7))
    assert run._held_memory is None  # released after the call
    run.hold_memory(True)
    run.execute(inputs())
    assert run._held_memory is not None


def test_runner_makes_a_new_context_only_when_a_context_setting_changes(fake_trt: Any) -> None:
    run = runner()
    engine = fake_trt.engines[0]
    run.configure(RunnerSettings(pre_allocated_outputs=True))
    assert len(engine.contexts) == 1
    run.configure(RunnerSettings(kernel_specialization=KernelSpecialization.eager))
    assert len(engine.contexts) == 2
    config = engine.contexts[-1].config
    assert config.dynamic_shapes_kernel_specialization_strategy is Strategy.EAGER
    run.configure(RunnerSettings(rtx_cuda_graphs=RtxCudaGraphs.whole_graph_capture))
    assert engine.contexts[-1].config.cuda_graph_strategy is GraphStrategy.WHOLE_GRAPH_CAPTURE


def test_runner_creates_its_context_on_the_first_call_when_lazy(fake_trt: Any) -> None:
    run = runner(lazy=True)
    assert fake_trt.engines[0].contexts == []
    run.execute(inputs())
    assert len(fake_trt.engines[0].contexts) == 1


def test_runner_refuses_a_wrong_input_count_when_called(fake_trt: Any) -> None:
    with pytest.raises(RuntimeError, match="1 inputs given, it takes 2"):
        runner().execute(inputs()[:1])


def test_runner_says_which_input_is_out_of_range_when_tensorrt_refuses_its_shape(
    fake_trt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeContext, "set_input_shape", lambda self, name, shape: False)
    with pytest.raises(
        RuntimeError, match=r"input '.*' of shape \(.*\) is outside the shapes the engine was built for"
    ):
        runner().execute(inputs())


def test_shared_cache_is_loaded_once_and_set_on_every_engine_when_engines_share_it(fake_trt: Any) -> None:
    cache = SharedRuntimeCache(b"good")
    first, second = runner(cache=cache), runner(cache=cache)
    configs = [first.context.config, second.context.config]
    assert configs[0].cache is configs[1].cache and configs[0].cache.deserialized == [b"good"]
    assert cache.loaded is True and cache.serialize() == b"kernels"


def test_shared_cache_reports_refused_bytes_when_tensorrt_rejects_them(fake_trt: Any) -> None:
    cache = SharedRuntimeCache(b"stale")
    runner(cache=cache)
    assert cache.loaded is False


def test_runner_leaves_the_cache_out_when_runtime_cache_is_off(fake_trt: Any) -> None:
    run = runner(RunnerSettings(use_cache=False), cache=SharedRuntimeCache(b"good"))
    assert run.context.config.cache is None


def test_cache_mismatch_names_each_differing_key_when_the_host_differs() -> None:
    recorded = rtx_runner.cache_key(HOST)
    assert rtx_runner.cache_mismatch(recorded, HOST) == ""
    reason = rtx_runner.cache_mismatch(recorded, {**HOST, "sm": "8.9", "cuda": "12.9"})
    assert "sm '9.0' here '8.9'" in reason and "cuda '13.0' here '12.9'" in reason


def artifact(cache: str | None = "engines/runtime.cache", key: dict[str, str] | None = None) -> SavedArtifact:
    record = EngineRecord(
        "e_engine", "engines/e.engine", 3, 1, ["8", "n", "0", "", "x", "y", "0", "", "", "0"]
    )
    return SavedArtifact(
        "model/graph.pt", [record], cache, rtx_runner.cache_key(HOST) if key is None else key
    )


def test_cache_decision_says_hit_or_why_not_when_loading() -> None:
    auto = RuntimeConfig()
    assert cache_decision(artifact(), HOST, auto) is None  # handed to TensorRT-RTX
    no_cache = cache_decision(artifact(cache=None), HOST, auto)
    assert no_cache is not None and no_cache.describe() == "miss: the bundle has no runtime cache"
    other_gpu = cache_decision(artifact(), {**HOST, "sm": "8.6"}, auto)
    assert other_gpu is not None and other_gpu.status is CacheStatus.miss and "sm" in other_gpu.reason
    off = RuntimeConfig(runtime_cache=RuntimeCacheMode.off)
    assert cache_decision(artifact(), HOST, off) == CacheState(CacheStatus.miss, "runtime.runtime_cache=off")


def test_choose_runner_takes_the_own_runner_when_rtx_before_2_13() -> None:
    assert choose_runner(HOST_211, RuntimeConfig(), artifact(), rtx_importable=True)[0]


@pytest.mark.parametrize(
    ("host", "policy", "importable", "reason"),
    [
        (HOST_211, RuntimeConfig(runtime_cache=RuntimeCacheMode.off), True, "runtime_cache=off"),
        ({**HOST_211, "torch_tensorrt": "2.13.0"}, RuntimeConfig(), True, "2.13.0"),
        (HOST_211, RuntimeConfig(), False, "not installed"),
        ({**HOST_211, "tensorrt_build": "tensorrt"}, RuntimeConfig(), True, "standard TensorRT"),
    ],
)
def test_choose_runner_keeps_the_cpp_runtime_when_own_runner_is_not_wanted_or_possible(
    host: dict[str, str], policy: RuntimeConfig, importable: bool, reason: str
) -> None:
    own, why = choose_runner(host, policy, artifact(), importable)
    assert not own and reason in why


def test_choose_runner_keeps_the_cpp_runtime_when_an_engine_needs_an_output_allocator() -> None:
    dependent = artifact()
    dependent.engines[0].serialized_info[9] = "1"
    own, why = choose_runner(HOST_211, RuntimeConfig(), dependent, rtx_importable=True)
    assert not own and "data-dependent" in why


def test_choose_runner_refuses_rtx_settings_in_one_line_when_tensorrt_is_standard() -> None:
    policy = RuntimeConfig(kernel_specialization=KernelSpecialization.eager)
    with pytest.raises(
        ConfigError, match=r"runtime.kernel_specialization=eager: TensorRT-RTX settings"
    ) as info:
        choose_runner({**HOST_211, "tensorrt_build": "tensorrt"}, policy, artifact(), True)
    assert "\n" not in str(info.value)


def test_cpp_runtime_accepts_runtime_cache_off_when_engines_run_there() -> None:
    off = RuntimeConfig(runtime_cache=RuntimeCacheMode.off)
    assert off.rtx_settings() == {}
    own, why = choose_runner({**HOST_211, "tensorrt_build": "tensorrt"}, off, artifact(), True)
    assert not own and why == "standard TensorRT engines"
    own, why = choose_runner(HOST_211, off, artifact(), True)
    assert not own and "runtime_cache=off" in why
    assert rtx_settings_refused(off, "the engines run on the C++ runtime") is None


def test_policy_record_round_trips_through_json_when_rtx_fields_are_set() -> None:
    policy = RuntimeConfig(
        name="mine",
        kernel_specialization=KernelSpecialization.none,
        rtx_cuda_graphs=RtxCudaGraphs.disabled,
        runtime_cache=RuntimeCacheMode.on,
    )
    assert RuntimeConfig.from_record(json.loads(json.dumps(policy.to_record()))) == policy


def test_policy_record_takes_defaults_when_a_bundle_predates_the_rtx_fields() -> None:
    old = {"name": "preallocated", "pre_allocated_outputs": True, "dynamic_allocation": False}
    policy = RuntimeConfig.from_record({**old, "cuda_graphs": False, "check_value_ranges": True})
    assert policy == PRESETS["preallocated"] and policy.runtime_cache is RuntimeCacheMode.auto


def test_policy_refuses_an_unknown_setting_value_in_one_line_when_given_a_string() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.kernel_specialization=sometimes: expected one of lazy"):
        RuntimeConfig(kernel_specialization="sometimes")  # type: ignore[arg-type]


def test_policy_refuses_torch_graphs_with_rtx_whole_graph_capture_when_combined() -> None:
    both = RuntimeConfig(cuda_graphs=True, rtx_cuda_graphs=RtxCudaGraphs.whole_graph_capture)
    with pytest.raises(ConfigError, match="cannot be combined"):
        as_policy(both)


def test_manifest_keeps_runtime_cache_entry_when_round_tripped_and_defaults_when_absent() -> None:
    fields = {
        "format_version": 2,
        "pipeline_version": "0",
        "bundle_id": "b",
        "created_at": "t",
        "backend": "tensorrt",
        "device": "cuda",
        "precision": "fp16",
        "model_name": "m",
        "model_file": "model/graph.pt",
        "environment": {},
        "config": {},
        "overrides": [],
        "compile_settings": {},
        "runtime": {},
        "inputs": [],
        "outputs": [],
        "verification": {},
        "weights": {},
        "engine_count": 0,
    }
    entry = {"file": "engines/runtime.cache", "key": rtx_runner.cache_key(HOST)}
    assert Manifest.from_json(Manifest(**fields, runtime_cache=entry).to_json()).runtime_cache == entry
    assert Manifest.from_json(Manifest(**fields).to_json()).runtime_cache == {}


def test_runner_binds_only_what_changed_when_called_again(fake_trt: Any) -> None:
    run = runner()
    given = inputs()
    run.execute(given)
    context = fake_trt.engines[0].contexts[0]
    context.calls.clear()
    outputs = run.execute(given)  # same shapes, same input tensors: only the new outputs are bound
    assert [c[:2] for c in context.calls] == [("address", "out0"), ("address", "out1"), ("execute", 7)]
    assert context.calls[0][2] == outputs[0].data_ptr()
    context.calls.clear()
    run.execute([torch.ones(3, 5, dtype=torch.int32), torch.zeros(3, 5)])  # new shapes and tensors
    assert [c[:2] for c in context.calls[:4]] == [
        ("shape", "ids"),
        ("shape", "mask"),
        ("address", "ids"),
        ("address", "mask"),
    ]


def test_runner_binds_everything_again_when_its_policy_changes(fake_trt: Any) -> None:
    run = runner()
    given = inputs()
    run.execute(given)
    run.configure(RunnerSettings(pre_allocated_outputs=True))  # same context, dropped state
    context = fake_trt.engines[0].contexts[0]
    context.calls.clear()
    run.execute(given)
    assert sorted(c[:2] for c in context.calls if c[0] != "execute") == [
        ("address", "ids"),
        ("address", "mask"),
        ("address", "out0"),
        ("address", "out1"),
        ("shape", "ids"),
        ("shape", "mask"),
    ]


def test_runner_pre_allocates_at_known_shapes_without_asking_the_context_after_the_launch(
    fake_trt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = runner(RunnerSettings(pre_allocated_outputs=True))
    run.execute(inputs())
    context = fake_trt.engines[0].contexts[0]
    asked: list[str] = []
    monkeypatch.setattr(context, "get_tensor_shape", lambda name: asked.append(name) or (2, 5))
    outputs = run.execute(inputs())
    assert asked == [] and [tuple(o.shape) for o in outputs] == [(2, 5), (2, 5)]
    assert run._next_outputs is not None and [tuple(o.shape) for o in run._next_outputs[2]] == [
        (2, 5),
        (2, 5),
    ]
