"""The TensorRT adapter's GPU-free logic: engine discovery, policy application, settings mapping.

Engines are faked here; tests/gpu/ runs the same functions on real engines.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

from pipeline.backends.tensorrt import EngineSnapshot, compile_settings
from pipeline.config import CompileConfig, RuntimeConfig, TilingLevel
from pipeline.errors import ConfigError
from pipeline.runtime.engines import (
    ModeGate,
    apply_to_engines,
    find_engines,
    is_engine,
    resources_held,
)
from pipeline.runtime.policy import runtime_preset


class FakeEngine:
    """Mimics the settable surface of torch.classes.tensorrt.Engine."""

    def __init__(self, accepts_pre_allocation: bool = True) -> None:
        self._pre_allocated = False
        self._accepts = accepts_pre_allocation
        self.dynamic_calls: list[bool] = []

    @property
    def use_pre_allocated_outputs(self) -> bool:
        return self._pre_allocated

    @use_pre_allocated_outputs.setter
    def use_pre_allocated_outputs(self, value: bool) -> None:
        if self._accepts:
            self._pre_allocated = value

    def use_dynamically_allocated_resources(self, dynamic: bool, /) -> None:
        self.dynamic_calls.append(dynamic)


def is_fake(value: object) -> bool:
    return isinstance(value, FakeEngine)


class Holder(nn.Module):
    def __init__(self, engine: FakeEngine) -> None:
        super().__init__()
        self.engine = engine


def reloaded_graph(engines: list[FakeEngine]) -> nn.Module:
    """The two layouts seen after torch_tensorrt.save/load: holder submodules and root attributes."""
    root = nn.Module()
    root.add_module("_run_on_acc_0", Holder(engines[0]))
    root.linear = nn.Linear(2, 2)
    for index, engine in enumerate(engines[1:], start=1):
        setattr(root, f"_run_on_acc_{index}_engine", engine)
    return root


def test_find_engines_finds_holder_and_root_engines_when_graph_mixes_layouts() -> None:
    engines = [FakeEngine(), FakeEngine(), FakeEngine()]
    found = find_engines(reloaded_graph(engines), predicate=is_fake)
    by_path = {ref.path: ref.engine for ref in found}
    assert by_path == {
        "_run_on_acc_0.engine": engines[0],
        "_run_on_acc_1_engine": engines[1],
        "_run_on_acc_2_engine": engines[2],
    }


def test_find_engines_lists_each_engine_once_when_shared_by_two_holders() -> None:
    engine = FakeEngine()
    root = nn.Module()
    root.add_module("a", Holder(engine))
    root.add_module("b", Holder(engine))
    assert len(find_engines(root, predicate=is_fake)) == 1


def test_find_engines_finds_none_when_module_has_no_engines() -> None:
    assert find_engines(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []


def test_is_engine_rejects_objects_that_are_not_tensorrt_script_objects() -> None:
    assert not is_engine(FakeEngine())
    assert not is_engine(torch.zeros(1))
    assert not is_engine("engine")


@pytest.mark.parametrize("name", ["standard", "preallocated", "dynamic", "cudagraphs"])
def test_apply_to_engines_sets_policy_on_every_engine_when_applied(name: str) -> None:
    policy = runtime_preset(name)
    engines = [FakeEngine(), FakeEngine()]
    readback = apply_to_engines(find_engines(reloaded_graph(engines), predicate=is_fake), policy)
    assert len(readback) == 2
    for engine in engines:
        assert engine.use_pre_allocated_outputs is policy.pre_allocated_outputs
        assert engine.dynamic_calls == [policy.dynamic_allocation]
    assert all(state["pre_allocated_outputs"] is policy.pre_allocated_outputs for state in readback.values())


def test_apply_to_engines_fails_when_engine_does_not_take_the_setting() -> None:
    engines = [FakeEngine(accepts_pre_allocation=False)]
    with pytest.raises(RuntimeError, match="did not take"):
        apply_to_engines(
            find_engines(reloaded_graph(engines), predicate=is_fake), runtime_preset("preallocated")
        )


class BrokenEngine(FakeEngine):
    """Refuses the dynamic-allocation switch (as a real engine does when its context cannot be made)."""

    def use_dynamically_allocated_resources(self, dynamic: bool, /) -> None:
        raise RuntimeError("cannot switch")


def test_apply_to_engines_puts_configured_engines_back_when_a_later_engine_refuses() -> None:
    engines = [FakeEngine(), FakeEngine(), FakeEngine(accepts_pre_allocation=False)]
    refs = find_engines(reloaded_graph(engines), predicate=is_fake)
    standard = runtime_preset("standard")
    apply_to_engines(refs, standard)
    with pytest.raises(RuntimeError, match="did not take"):
        apply_to_engines(refs, runtime_preset("preallocated"), previous=standard)
    assert [e.use_pre_allocated_outputs for e in engines] == [False, False, False]
    assert [e.dynamic_calls[-1] for e in engines] == [False, False, False]


def test_resources_held_switches_back_only_engines_it_switched_when_one_refuses() -> None:
    first, broken, last = FakeEngine(), BrokenEngine(), FakeEngine()
    root = nn.Module()
    for index, engine in enumerate([first, broken, last]):
        setattr(root, f"_run_on_acc_{index}_engine", engine)
    refs = find_engines(root, predicate=is_fake)
    assert [ref.engine for ref in refs] == [first, broken, last]
    with pytest.raises(RuntimeError, match="cannot switch"), resources_held(refs, runtime_preset("dynamic")):
        pytest.fail("the block must not run when holding fails")
    assert first.dynamic_calls == [False, True]  # switched, then put back to the policy's
    assert last.dynamic_calls == []  # never reached: left as it was


def test_resources_held_keeps_memory_then_restores_dynamic_when_block_exits() -> None:
    engines = [FakeEngine(), FakeEngine()]
    refs = find_engines(reloaded_graph(engines), predicate=is_fake)
    with resources_held(refs, runtime_preset("dynamic")):
        assert all(e.dynamic_calls[-1] is False for e in engines)
    assert all(e.dynamic_calls[-1] is True for e in engines)


def test_resources_held_restores_even_when_block_raises() -> None:
    engines = [FakeEngine()]
    refs = find_engines(reloaded_graph(engines), predicate=is_fake)
    with pytest.raises(ValueError), resources_held(refs, runtime_preset("dynamic")):
        raise ValueError
    assert engines[0].dynamic_calls == [False, True]


class RecordingSwitch:
    """A process-wide switch that records, at each change, which calls are running."""

    def __init__(self, on: bool = False) -> None:
        self.on = on
        self.lock = threading.Lock()
        self.running = {True: 0, False: 0}
        self.violations: list[str] = []

    def enter(self, on: bool) -> None:
        with self.lock:
            self.running[on] += 1
            if self.on is not on:
                self.violations.append(f"call wanting {on} ran with the switch {self.on}")
            if self.running[True] > 1 or (self.running[True] and self.running[False]):
                self.violations.append(f"overlap: {dict(self.running)}")

    def leave(self, on: bool) -> None:
        with self.lock:
            self.running[on] -= 1


def test_mode_gate_turns_mode_on_only_for_mode_on_calls_and_off_after_when_called() -> None:
    switch = RecordingSwitch()
    gate = ModeGate(lambda: switch.on, lambda value: setattr(switch, "on", value))
    with gate.call(True):
        assert switch.on
    assert not switch.on
    with gate.call(False):
        assert not switch.on


def test_mode_gate_switches_mode_off_for_mode_off_calls_when_outside_code_left_it_on() -> None:
    switch = RecordingSwitch(on=True)
    gate = ModeGate(lambda: switch.on, lambda value: setattr(switch, "on", value))
    with gate.call(False):
        assert not switch.on


def test_mode_gate_never_overlaps_mode_on_call_with_any_other_when_threads_race() -> None:
    switch = RecordingSwitch()
    gate = ModeGate(lambda: switch.on, lambda value: setattr(switch, "on", value))
    calls = {True: gate.call(True), False: gate.call(False)}  # shared, as a model shares its own

    def worker(on: bool) -> None:
        for _ in range(200):
            with calls[on]:
                switch.enter(on)
                time.sleep(0)
                switch.leave(on)

    threads = [threading.Thread(target=worker, args=(i % 3 == 0,)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "gate deadlocked"
    assert switch.violations == []
    assert not switch.on


def test_mode_gate_releases_when_call_raises() -> None:
    switch = RecordingSwitch()
    gate = ModeGate(lambda: switch.on, lambda value: setattr(switch, "on", value))
    with pytest.raises(ValueError), gate.call(True):
        raise ValueError
    with gate.call(False):  # would wait forever if the failed call still held the gate
        assert not switch.on


def run_in_thread(target: Callable[[], object], timeout: float = 10) -> bool:
    """Run ``target`` in a thread; True when it finished within ``timeout`` seconds."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def one_call(gate: ModeGate, on: bool) -> None:
    with gate.call(on):
        pass


def test_mode_gate_stays_usable_when_switching_the_mode_on_fails() -> None:
    switch = RecordingSwitch()

    def flaky_set(value: bool) -> None:
        if value:
            raise RuntimeError("set_cudagraphs_mode failed")
        switch.on = value

    gate = ModeGate(lambda: switch.on, flaky_set)
    with pytest.raises(RuntimeError, match="set_cudagraphs_mode failed"), gate.call(True):
        pass
    assert run_in_thread(lambda: one_call(gate, False))


def test_mode_gate_passes_nested_call_of_same_mode_and_refuses_other_mode_when_same_thread() -> None:
    switch = RecordingSwitch()
    gate = ModeGate(lambda: switch.on, lambda value: setattr(switch, "on", value))

    def nested() -> None:
        with gate.call(True), gate.call(True):
            assert switch.on
        assert not switch.on
        with gate.call(False), pytest.raises(RuntimeError, match="called from inside"), gate.call(True):
            pass

    assert run_in_thread(nested), "nested call waited for itself"
    assert run_in_thread(lambda: one_call(gate, True))


def test_mode_gate_lets_waiting_mode_off_call_in_between_back_to_back_mode_on_calls() -> None:
    switch = RecordingSwitch()
    gate = ModeGate(lambda: switch.on, lambda value: setattr(switch, "on", value))
    stop, graphs_done = threading.Event(), []

    def graphs(worker: int) -> None:
        while not stop.is_set():
            with gate.call(True):
                time.sleep(0.002)
            graphs_done.append(worker)

    workers = [threading.Thread(target=graphs, args=(i,), daemon=True) for i in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.05)
    try:
        assert run_in_thread(lambda: one_call(gate, False), timeout=5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(5)
    assert graphs_done and not switch.on


ALL_SETTINGS = {f for f in CompileConfig.__dataclass_fields__} | {"use_python_runtime"}


def test_compile_settings_pass_every_field_and_force_cpp_runtime_when_all_supported() -> None:
    kwargs = compile_settings(CompileConfig(lazy_engine_init=True, optimization_level=3), ALL_SETTINGS)
    assert kwargs["lazy_engine_init"] is True
    assert kwargs["optimization_level"] == 3
    assert kwargs["use_python_runtime"] is False


def test_compile_settings_leave_optimization_level_to_tensorrt_when_null() -> None:
    assert "optimization_level" not in compile_settings(CompileConfig(), ALL_SETTINGS)


def test_compile_settings_drop_unsupported_setting_when_it_holds_its_default() -> None:
    kwargs = compile_settings(CompileConfig(), ALL_SETTINGS - {"truncate_double", "use_python_runtime"})
    assert "truncate_double" not in kwargs
    assert "use_python_runtime" not in kwargs


def test_compile_settings_reject_unsupported_setting_when_config_changes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipeline.backends.tensorrt as trt

    monkeypatch.setattr(trt, "_torch_tensorrt", lambda: type("T", (), {"__version__": "9.9"}))
    with pytest.raises(ConfigError, match=r"compile.truncate_double=True: not supported .*9\.9"):
        compile_settings(CompileConfig(truncate_double=True), ALL_SETTINGS - {"truncate_double"})


def test_runtime_config_is_a_plain_dataclass_when_compared() -> None:
    assert RuntimeConfig(name="x", cuda_graphs=True) != RuntimeConfig(name="x")


class SerializingEngine(FakeEngine):
    """Counts serializations, which cost hundreds of MB of base64 on a real engine."""

    def __init__(self) -> None:
        super().__init__()
        self.serializations = 0

    def __getstate__(self) -> list[str]:
        self.serializations += 1
        return ["abi", "name", "device", "engine-bytes"]


def test_engine_snapshot_serializes_once_when_state_is_read_and_module_deep_copied() -> None:
    engine = SerializingEngine()
    holder = nn.Module()
    holder._run_on_acc_0_engine = EngineSnapshot(engine)  # type: ignore[assignment]
    copied = copy.deepcopy(holder)
    states = [copied._run_on_acc_0_engine.__getstate__() for _ in range(3)]
    assert engine.serializations == 1
    assert all(state == ["abi", "name", "device", "engine-bytes"] for state in states)
    assert copied._run_on_acc_0_engine.use_pre_allocated_outputs is False  # forwarded to the engine


def test_compile_settings_pass_tiling_level_as_plain_string_when_set() -> None:
    kwargs = compile_settings(
        CompileConfig(tiling_optimization_level=TilingLevel.full, l2_limit_for_tiling=1 << 20),
        ALL_SETTINGS,
    )
    # Torch-TensorRT looks the level up in a dict keyed by plain strings.
    assert type(kwargs["tiling_optimization_level"]) is str
    assert kwargs["tiling_optimization_level"] == "full"
    assert kwargs["l2_limit_for_tiling"] == 1 << 20


def test_compile_settings_keep_masked_attention_non_causal_when_defaults_used() -> None:
    kwargs = compile_settings(CompileConfig(), ALL_SETTINGS)
    assert kwargs["attn_bias_is_causal"] is False
    assert kwargs["decompose_attention"] is False
