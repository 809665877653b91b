"""The bench's memory figures: each loaded model measured alone, in the allocator view and the
device view (what nvidia-smi shows a deployment host), and how the report shows them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from pipeline.config import BenchConfig, RuntimeConfig
from pipeline.report import MEMORY_HEADER, memory_markdown
from pipeline.runtime.policy import PolicyReport
from pipeline.stages import bench
from tests.helpers import sample_manifest

MiB = 2**20


@dataclass
class FakeDevice:
    """Device memory in use: what every model loaded so far holds."""

    in_use: int = 0


@dataclass
class FakeLoaded:
    """A loaded model that holds ``size`` bytes of device memory from its load on."""

    policy: RuntimeConfig
    policy_report: PolicyReport

    def __call__(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        return (inputs[0],)


def test_bench_model_measures_idle_memory_of_each_variant_alone_when_extra_policies_are_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = FakeDevice()
    sizes = {"preallocated": 300 * MiB, "standard": 100 * MiB, "cudagraphs": 50 * MiB}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: device.in_use)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: device.in_use)
    monkeypatch.setattr(bench, "gpu_memory_in_use", lambda: device.in_use)
    monkeypatch.setattr(bench, "device_memory_used", lambda: device.in_use)
    monkeypatch.setattr(bench, "process_memory_used", lambda: None)
    monkeypatch.setattr(bench, "compare_latency", lambda calls, *a, **k: {})

    def load(policy: RuntimeConfig) -> FakeLoaded:
        device.in_use += sizes[policy.name]
        return FakeLoaded(policy, PolicyReport(policy=policy, applied=True))

    settings = BenchConfig(
        warmup=2, iterations=2, rounds=1, baselines=[], policies=["standard", "cudagraphs"]
    )
    report = bench.bench_model(load, RuntimeConfig(name="preallocated"), (torch.ones(1),), settings)

    assert report.load.idle_engine_memory == 300 * MiB
    assert {name: m.idle_engine_memory for name, m in report.variant_loads.items()} == {
        "standard": 100 * MiB,
        "cudagraphs": 50 * MiB,
    }
    assert report.to_dict()["load"]["idle_engine_memory"] == 300 * MiB


@dataclass
class CachingDevice:
    """A GPU whose model holds ``engines`` bytes and whose calls leave blocks in torch's cache."""

    context: int = 500 * MiB
    engines: int = 0
    cache: int = 0

    def empty_cache_and_measure(self) -> int:
        self.cache = 0
        return self.context + self.engines

    def used(self) -> int:
        return self.context + self.engines + self.cache


@dataclass
class CachingLoaded(FakeLoaded):
    """Its first call takes a large workspace from torch's cache, later calls a small one."""

    device: CachingDevice = field(default_factory=CachingDevice)
    calls: int = 0

    def __call__(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        self.calls += 1
        self.device.cache = max(self.device.cache, (64 if self.calls == 1 else 16) * MiB)
        return (inputs[0],)


def bench_on(monkeypatch: pytest.MonkeyPatch, device: CachingDevice, process: bool) -> bench.BenchReport:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 80 * MiB)
    monkeypatch.setattr(bench, "gpu_memory_in_use", device.empty_cache_and_measure)
    monkeypatch.setattr(bench, "device_memory_used", device.used)
    # NVML counts this process only: less than the device holds (other processes' memory).
    nvml = (lambda: device.used() - 100 * MiB) if process else (lambda: None)
    monkeypatch.setattr(bench, "process_memory_used", nvml)
    monkeypatch.setattr(bench, "compare_latency", lambda calls, *a, **k: {})

    def load(policy: RuntimeConfig) -> CachingLoaded:
        device.engines += 200 * MiB
        return CachingLoaded(policy, PolicyReport(policy=policy, applied=True), device)

    settings = BenchConfig(warmup=3, iterations=2, rounds=1, baselines=[])
    return bench.bench_model(load, RuntimeConfig(), (torch.ones(1),), settings)


def test_bench_model_counts_torch_cache_in_device_view_only_when_calls_leave_it_cached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load = bench_on(monkeypatch, CachingDevice(), process=True).load

    # Allocator view: the cache handed back, the engines alone; torch's peak allocated.
    assert load.idle_engine_memory == 200 * MiB
    assert load.peak_allocated == 80 * MiB
    # Device view (nvidia-smi): the warm-up calls' cached blocks stay; the first call's were larger.
    assert load.device_idle_memory == 216 * MiB
    assert load.device_peak_memory == 264 * MiB
    assert load.process_idle_memory == 216 * MiB and load.process_peak_memory == 264 * MiB


def test_bench_memory_rows_show_both_views_and_a_dash_for_nvml_when_it_gives_no_figure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report = bench_on(monkeypatch, CachingDevice(), process=False)
    rows = dict(bench.report_rows(report))

    assert rows["memory idle / peak, allocator"].startswith("200 / 80 MiB")
    assert rows["memory idle / peak, device (nvidia-smi)"].startswith("216 / 264 MiB")
    assert rows["memory idle / peak, this process (NVML)"] == "- / - MiB"
    recorded = report.to_dict()["load"]
    assert recorded["device_idle_memory"] == 216 * MiB and recorded["process_idle_memory"] is None


def test_bench_model_records_no_memory_when_run_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("the CPU path needs a host without CUDA")

    def load(policy: RuntimeConfig) -> FakeLoaded:
        return FakeLoaded(policy, PolicyReport(policy=policy, applied=True))

    settings = BenchConfig(warmup=1, iterations=2, rounds=1, baselines=[])
    report = bench.bench_model(load, RuntimeConfig(), (torch.ones(1),), settings)

    recorded = report.to_dict()["load"]
    for key in ("idle_engine_memory", "peak_allocated", "device_idle_memory", "device_peak_memory"):
        assert recorded[key] is None
    assert not any(label.startswith("memory") for label, _ in bench.report_rows(report))


def memory_table(bench_record: dict[str, Any]) -> list[dict[str, str]]:
    manifest = sample_manifest(model_name="resnet", backend="tensorrt", bench=bench_record)
    lines = memory_markdown([manifest]).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == MEMORY_HEADER
    return [
        dict(zip(MEMORY_HEADER, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


FIGURES = [header for header in MEMORY_HEADER if "MiB" in header]


def test_memory_table_shows_each_view_side_by_side_when_measured_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = bench_on(monkeypatch, CachingDevice(), process=False).to_dict()
    (row,) = memory_table(recorded)
    assert [row[header] for header in FIGURES] == ["200", "80", "216", "264", "-", "-"]


def test_memory_table_shows_dashes_when_benched_on_cpu() -> None:
    load = bench.LoadMeasurement(load_seconds=0.1, first_call_seconds=0.01).record()
    (row,) = memory_table({"policy": "standard", "latency": {}, "load": load})
    assert [row[header] for header in FIGURES] == ["-"] * 6


def test_memory_table_reads_allocator_view_of_manifest_benched_before_device_view() -> None:
    old_load = {"load_seconds": 0.1, "first_call_seconds": 0.01, "idle_engine_memory": 300 * MiB}
    old_variant = {"load_seconds": 0.1, "first_call_seconds": 0.01, "idle_engine_memory": 100 * MiB}
    rows = memory_table(
        {
            "policy": "preallocated",
            "latency": {},
            "load": {**old_load, "peak_allocated": 50 * MiB},
            "variant_loads": {"cudagraphs": old_variant},
        }
    )
    assert [(row["policy"], *(row[h] for h in FIGURES)) for row in rows] == [
        ("preallocated", "300", "50", "-", "-", "-", "-"),
        ("cudagraphs", "100", "-", "-", "-", "-", "-"),
    ]
