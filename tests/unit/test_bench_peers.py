"""The bundle is timed against its peers (eager, torch.compile's modes) and the bench output and the
report say, per bundle, how it compares, in words where it is not faster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from pipeline.config import BenchConfig, RuntimeConfig, compose, resolve
from pipeline.config.schema import Baseline
from pipeline.report import PEERS_HEADER, peers_markdown, rows_for
from pipeline.runtime.format import Manifest
from pipeline.stages import bench
from pipeline.stages.bench import BenchReport, LoadMeasurement, report_rows
from pipeline.timing import Latency
from tests.helpers import EagerAsLoaded, sample_manifest


def fake_compile(modes: list[str | None]) -> Callable[..., Callable[..., Any]]:
    """Stands in for torch.compile (whose CPU compile takes seconds): records the mode asked for."""

    def compile_(module: nn.Module, mode: str | None = None) -> Callable[..., Any]:
        modes.append(mode)
        return module

    return compile_


def bench_linear(
    monkeypatch: pytest.MonkeyPatch, baselines: list[Baseline], iterations: int
) -> tuple[BenchReport, list[str | None]]:
    """A Linear benched as the loaded model under ``baselines``; torch.compile faked."""
    modes: list[str | None] = []
    monkeypatch.setattr(torch, "compile", fake_compile(modes))
    eager = nn.Linear(4, 4).eval()
    settings = BenchConfig(warmup=1, iterations=iterations, rounds=2, baselines=baselines)
    report = bench.bench_model(
        lambda policy: EagerAsLoaded(eager, policy),
        RuntimeConfig(),
        (torch.ones(2, 4),),
        settings,
        eager=eager,
    )
    return report, modes


def test_bench_model_times_each_compile_mode_and_records_its_compile_time_when_baselines_name_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report, modes = bench_linear(
        monkeypatch,
        [
            Baseline.eager,
            Baseline.inductor,
            Baseline.inductor_reduce_overhead,
            Baseline.inductor_max_autotune,
        ],
        iterations=4,
    )

    assert modes == [None, "reduce-overhead", "max-autotune-no-cudagraphs"]
    assert list(report.latency) == [
        "loaded",
        "eager",
        "inductor",
        "inductor_reduce_overhead",
        "inductor_max_autotune",
    ]
    assert all(stats.iterations == 4 for stats in report.latency.values())
    assert set(report.extra_seconds) == {
        "inductor_compile",
        "inductor_reduce_overhead_compile",
        "inductor_max_autotune_compile",
    }
    assert set(report.to_dict()["latency"]) == set(report.latency)


def test_bench_model_compiles_no_mode_when_baselines_name_no_compile_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report, modes = bench_linear(monkeypatch, [Baseline.eager], iterations=2)
    assert modes == [] and report.extra_seconds == {}
    assert list(report.latency) == ["loaded", "eager"]


def test_bench_defaults_time_reduce_overhead_but_not_max_autotune_when_baselines_are_not_set() -> None:
    for baselines in (BenchConfig().baselines, resolve(compose([])).bench.baselines):
        assert Baseline.inductor_reduce_overhead in baselines
        assert Baseline.inductor_max_autotune not in baselines
        assert {Baseline.eager, Baseline.inductor, Baseline.fresh} <= set(baselines)


def latency(median: float) -> Latency:
    return Latency(median_ms=median, p90_ms=median, min_ms=median, device_median_ms=None, iterations=10)


def report_with(medians: dict[str, float]) -> BenchReport:
    return BenchReport(
        policy="standard",
        latency={name: latency(median) for name, median in medians.items()},
        load=LoadMeasurement(load_seconds=0.1, first_call_seconds=0.01),
    )


def terminal(report: BenchReport) -> dict[str, str]:
    return dict(report_rows(report))


def test_report_rows_say_bundle_is_not_faster_when_its_median_is_at_least_a_peers() -> None:
    rows = terminal(
        report_with({"loaded": 1.02, "eager": 5.0, "inductor": 1.5, "inductor_reduce_overhead": 1.0})
    )
    assert rows["loaded vs peers"] == (
        "0.20x eager PyTorch, 0.68x torch.compile default mode, 1.02x torch.compile reduce-overhead"
    )
    assert rows["loaded note"] == "the bundle is not faster than torch.compile reduce-overhead here (1.02x)"


def test_report_rows_flag_a_tie_with_a_peer_when_medians_are_equal() -> None:
    rows = terminal(report_with({"loaded": 2.0, "inductor": 2.0, "eager": 4.0}))
    assert rows["loaded note"] == "the bundle is not faster than torch.compile default mode here (1.00x)"


def test_report_rows_name_every_peer_not_beaten_fastest_first_when_several_are_faster() -> None:
    rows = terminal(
        report_with({"loaded": 3.0, "eager": 2.5, "inductor": 2.0, "inductor_reduce_overhead": 6.0})
    )
    assert rows["loaded note"] == (
        "the bundle is not faster than torch.compile default mode here (1.50x), "
        "nor than eager PyTorch (1.20x)"
    )


def test_report_rows_have_no_note_when_bundle_beats_every_peer() -> None:
    rows = terminal(report_with({"loaded": 0.9, "eager": 5.0, "inductor": 1.0, "fresh": 0.5}))
    # fresh is the same engines compiled in-process, not a peer: being slower than it is no note.
    assert "loaded note" not in rows
    assert rows["loaded vs peers"] == "0.18x eager PyTorch, 0.90x torch.compile default mode"


def test_report_rows_compare_each_extra_policy_with_the_peers_when_policies_are_timed() -> None:
    rows = terminal(report_with({"loaded": 0.9, "loaded:cudagraphs": 1.1, "inductor_reduce_overhead": 1.0}))
    assert "loaded note" not in rows
    assert rows["loaded:cudagraphs note"] == (
        "the bundle is not faster than torch.compile reduce-overhead here (1.10x)"
    )


def stats(median: float) -> dict[str, Any]:
    return {"median_ms": median, "p90_ms": median, "min_ms": median, "iterations": 10}


def benched(latency: dict[str, float], load: dict[str, Any] | None = None) -> Manifest:
    return sample_manifest(
        model_name="bert",
        backend="tensorrt",
        bench={
            "policy": "standard",
            "latency": {name: stats(median) for name, median in latency.items()},
            "load": load if load is not None else {"load_seconds": 0.5, "first_call_seconds": 0.01},
        },
    )


def table(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == PEERS_HEADER
    return [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]


def test_peers_markdown_gives_each_peers_ratio_and_says_not_faster_when_a_peer_is_faster() -> None:
    manifest = benched({"loaded": 1.02, "eager": 4.0, "inductor": 2.0, "inductor_reduce_overhead": 1.0})
    (row,) = table(peers_markdown([manifest]))
    assert row["vs eager PyTorch"] == "0.26x"
    assert row["vs torch.compile default mode"] == "0.51x"
    assert row["vs torch.compile reduce-overhead"] == "1.02x"
    assert row["vs torch.compile max-autotune-no-cudagraphs"] == "-"
    assert row["note"] == "the bundle is not faster than torch.compile reduce-overhead here (1.02x)"


def test_peers_markdown_says_faster_than_every_peer_when_the_bundle_is() -> None:
    manifest = benched({"loaded": 0.5, "eager": 4.0, "inductor_max_autotune": 0.6, "fresh": 0.4})
    (row,) = table(peers_markdown([manifest]))
    assert row["vs torch.compile max-autotune-no-cudagraphs"] == "0.83x"
    assert row["note"] == "faster than every peer timed"
    assert "not faster" not in peers_markdown([manifest])


def test_report_reads_manifest_without_new_peers_or_memory_fields_when_benched_before_them() -> None:
    # A manifest benched before the reduce-overhead peer and the device memory view existed.
    old = benched(
        {"loaded": 1.0, "eager": 4.0, "inductor": 2.0, "fresh": 1.0},
        load={"load_seconds": 0.5, "first_call_seconds": 0.01, "idle_engine_memory": 100 * 2**20},
    )
    (row,) = table(peers_markdown([old]))
    assert row["vs torch.compile default mode"] == "0.50x"
    assert row["vs torch.compile reduce-overhead"] == "-"
    assert [r.cells["variant"] for r in rows_for(old)] == ["loaded bundle", "eager", "inductor", "fresh"]


def test_peers_markdown_is_empty_when_no_peer_was_timed() -> None:
    assert peers_markdown([benched({"loaded": 1.0, "fresh": 1.0})]) == ""
