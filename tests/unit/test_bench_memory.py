"""The bench's memory figures count the loaded model alone, not the variants loaded after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from pipeline.config import BenchConfig, RuntimeConfig
from pipeline.runtime.policy import PolicyReport
from pipeline.stages import bench

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
