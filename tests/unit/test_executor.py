"""The engine executors' GPU-free logic: what a load reports, policies on C++ engines and on
TensorRT-RTX runners, the serialized-engine layout check. Engines and runners are faked here;
tests/gpu/ runs the same executors on real engines (test_tensorrt_bundles, test_rtx_runner)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import BundleError, ConfigError
from pipeline.runtime import engine_layout
from pipeline.runtime.engine_graph import EngineRecord
from pipeline.runtime.engines import EngineRef
from pipeline.runtime.executor import CacheState, CacheStatus, NoEngines, RunnerKind
from pipeline.runtime.policy import KernelSpecialization, RuntimeConfig, runtime_preset
from pipeline.runtime.rtx_runner import RtxRunners, RunnerSettings, SharedRuntimeCache
from pipeline.runtime.tensorrt import CPP_RUNTIME, OWN_RUNNER, CppEngines
from tests.unit.test_engines import FakeEngine


class FakeRunner:
    """Mimics :class:`RtxEngineRunner`'s configuration surface; ``refuse`` fails a setting."""

    def __init__(self, refuse: bool = False) -> None:
        self.settings = RunnerSettings()
        self.refuse = refuse
        self.held: list[bool] = []

    def configure(self, settings: RunnerSettings) -> None:
        if self.refuse and settings.pre_allocated_outputs:
            raise RuntimeError("runner refused")
        self.settings = settings

    def hold_memory(self, held: bool) -> None:
        self.held.append(held)


class FakeCache(SharedRuntimeCache):
    def __init__(self, loaded: bool | None, contents: bytes = b"") -> None:
        super().__init__(None)
        self.loaded = loaded
        self.contents = contents

    def serialize(self) -> bytes:
        return self.contents


def runners(
    *fakes: FakeRunner, cache: SharedRuntimeCache | None = None, miss: CacheState | None = None
) -> RtxRunners:
    named: dict[str, Any] = {f"e{i}": fake for i, fake in enumerate(fakes)}
    return RtxRunners(named, cache or FakeCache(None), "TensorRT-RTX before 2.13", miss, RuntimeConfig())


def test_load_outcome_reports_runner_and_cache_as_load_reports_show_them_when_recorded() -> None:
    cpp = CppEngines([EngineRef("e", FakeEngine())], "standard TensorRT engines", "standard TensorRT")
    assert cpp.outcome().record() == {
        "runner": CPP_RUNTIME,
        "reason": "standard TensorRT engines",
        "runtime_cache": "not used: standard TensorRT",
    }
    assert runners(FakeRunner(), cache=FakeCache(True)).outcome().record()["runner"] == OWN_RUNNER


@pytest.mark.parametrize(
    ("loaded", "miss", "expected"),
    [
        (None, None, "pending: the engines' contexts are created on the first call"),
        (True, None, "hit"),
        (False, None, "miss: TensorRT-RTX refused the cache's contents"),
        (
            None,
            CacheState(CacheStatus.miss, "the bundle has no runtime cache"),
            "miss: the bundle has no runtime cache",
        ),
    ],
)
def test_rtx_runners_say_whether_the_runtime_cache_served_the_load_when_asked(
    loaded: bool | None, miss: CacheState | None, expected: str
) -> None:
    executor = runners(FakeRunner(), cache=FakeCache(loaded), miss=miss)
    assert executor.cache_state().describe() == expected


def test_rtx_runners_hand_out_the_cache_contents_only_when_there_are_some() -> None:
    assert runners(FakeRunner(), cache=FakeCache(True, b"kernels")).cache_bytes() == b"kernels"
    assert runners(FakeRunner(), cache=FakeCache(True, b"")).cache_bytes() is None


def test_rtx_runners_put_the_previous_policy_back_on_every_runner_when_one_refuses() -> None:
    good, bad = FakeRunner(), FakeRunner(refuse=True)
    executor = runners(good, bad)
    standard = runtime_preset("standard")
    executor.configure(standard)
    with pytest.raises(RuntimeError, match="runner refused"):
        executor.configure(runtime_preset("preallocated"), previous=standard)
    assert good.settings == bad.settings == RunnerSettings.from_policy(standard)
    assert executor.policy == standard


def test_rtx_runners_hold_memory_on_every_runner_only_inside_the_block_when_asked() -> None:
    fakes = FakeRunner(), FakeRunner()
    with runners(*fakes).hold_memory():
        assert [f.held for f in fakes] == [[True], [True]]
    assert [f.held for f in fakes] == [[True, False], [True, False]]


def test_cpp_engines_refuse_tensorrt_rtx_settings_naming_the_runner_when_configured() -> None:
    cpp = CppEngines([EngineRef("e", FakeEngine())], "standard TensorRT engines", "standard TensorRT")
    with pytest.raises(ConfigError, match=r"kernel_specialization=eager.*C\+\+ runtime"):
        cpp.configure(RuntimeConfig(kernel_specialization=KernelSpecialization.eager))
    report = cpp.configure(runtime_preset("preallocated"))
    assert report.engines_configured == 1 and cpp.engine_objects()["e"].use_pre_allocated_outputs


def test_no_engines_apply_only_the_default_policy_when_configured() -> None:
    executor = NoEngines("an exported program")
    assert executor.configure(RuntimeConfig()).applied
    refused = executor.configure(runtime_preset("cudagraphs"))
    assert not refused.applied and "has none" in refused.reason
    assert executor.outcome().runner is RunnerKind.none


RECORD = EngineRecord(
    attribute="_run_on_acc_0_engine",
    file="engines/_run_on_acc_0.engine",
    engine_index=engine_layout.LAYOUT.engine,
    outputs=1,
    serialized_info=["8", "name", "device", "", "in0%in1", "out0", "0", "meta", "x86", "0", "0"],
)


def test_check_engine_layout_refuses_before_any_engine_when_the_runtime_lays_fields_out_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = {"INPUT_BINDING_NAMES_IDX": 6, "SERIALIZATION_LEN": len(RECORD.serialized_info)}
    monkeypatch.setattr(engine_layout, "runtime_constant", exported.get)
    with pytest.raises(BundleError, match="input_binding_names at 6 \\(this pipeline reads 4\\)"):
        engine_layout.check_engine_layout([RECORD])


def test_check_engine_layout_refuses_an_engine_recorded_with_another_field_count_when_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_layout, "runtime_constant", {"SERIALIZATION_LEN": 12, "ENGINE_IDX": 3}.get)
    with pytest.raises(BundleError, match=r"recorded with 11 fields .* expects 12 .*rebuild the bundle here"):
        engine_layout.check_engine_layout([RECORD])


def test_binding_names_follow_the_layout_when_an_engine_record_is_read() -> None:
    info = RECORD.serialized_info
    assert engine_layout.binding_names(info, engine_layout.LAYOUT.input_binding_names) == ["in0", "in1"]
    assert engine_layout.binding_names(info, engine_layout.LAYOUT.output_binding_names) == ["out0"]
    assert not engine_layout.requires_output_allocator(info)
