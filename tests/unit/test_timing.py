"""Side-by-side latency measurement."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest
import torch

from pipeline.timing import compare_latency, process_memory_used


@pytest.mark.parametrize(("iterations", "rounds"), [(10, 3), (7, 5), (3, 10), (1, 1)])
def test_compare_latency_times_exactly_the_requested_calls_when_split_into_rounds(
    iterations: int, rounds: int
) -> None:
    counts = {"a": 0, "b": 0}

    def call(name: str) -> None:
        counts[name] += 1

    result = compare_latency(
        {"a": lambda: call("a"), "b": lambda: call("b")}, warmup=2, iterations=iterations, rounds=rounds
    )
    assert counts == {"a": iterations + 2, "b": iterations + 2}
    assert result["a"].iterations == result["b"].iterations == iterations


def test_compare_latency_interleaves_variants_when_rounds_exceed_one() -> None:
    order: list[str] = []
    compare_latency(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=0, iterations=4, rounds=2
    )
    assert order == ["a", "a", "b", "b", "a", "a", "b", "b"]


def test_compare_latency_prepares_shared_state_before_each_round_when_variants_share_it() -> None:
    state = {"mode": ""}
    seen: list[tuple[str, str]] = []
    calls = {"a": lambda: seen.append(("a", state["mode"])), "b": lambda: seen.append(("b", state["mode"]))}
    prepare = {"a": lambda: state.update(mode="A"), "b": lambda: state.update(mode="B")}
    compare_latency(calls, warmup=1, iterations=4, rounds=2, prepare=prepare, settle=1)
    assert all(mode == name.upper() for name, mode in seen)


def test_compare_latency_keeps_warming_up_until_warmup_seconds_have_passed_when_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline import timing

    now = {"s": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now["s"])
    counts = {"calls": 0}

    def call() -> None:  # each call takes 10 ms on the fake clock
        counts["calls"] += 1
        now["s"] += 0.01

    compare_latency({"call": call}, warmup=2, iterations=3, rounds=1, warmup_s=0.5)
    assert 50 <= counts["calls"] - 3 <= 51  # 0.5 s of 10 ms calls, far more than the 2 counted
    counts["calls"] = 0
    compare_latency({"call": call}, warmup=2, iterations=3, rounds=1)
    assert counts["calls"] == 2 + 3


def fake_pynvml(processes: list[Any], calls: list[str]) -> types.ModuleType:
    """A pynvml whose one GPU runs ``processes``; ``calls`` records init and shutdown."""
    module = types.ModuleType("pynvml")
    module.nvmlInit = lambda: calls.append("init")  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByUUID = lambda uuid: uuid  # type: ignore[attr-defined]
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: processes  # type: ignore[attr-defined]
    return module


def on_fake_gpu(monkeypatch: pytest.MonkeyPatch, processes: list[Any]) -> list[str]:
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(processes, calls))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(uuid="0-1"))
    return calls


def test_process_memory_used_reports_this_process_only_when_nvml_lists_several(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=9 * 2**30)
    mine = types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=700 * 2**20)
    calls = on_fake_gpu(monkeypatch, [other, mine])
    assert process_memory_used() == 700 * 2**20
    assert calls == ["init", "shutdown"]


def test_process_memory_used_is_none_when_nvml_does_not_list_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In a container the driver lists host process ids; NVML may also withhold the figure.
    on_fake_gpu(monkeypatch, [types.SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=2**30)])
    assert process_memory_used() is None
    on_fake_gpu(monkeypatch, [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=None)])
    assert process_memory_used() is None


def test_process_memory_used_is_none_when_pynvml_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert process_memory_used() is None
