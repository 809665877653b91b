"""The bench stage, ``python -m pipeline.bundle bench`` and the policy report, on CPU bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config import BenchConfig, RuntimeConfig
from pipeline.config.schema import Baseline
from pipeline.report import COLUMNS, main, write_report
from pipeline.stages.bench import bench_model, report_rows
from pipeline.stages.package import PublishedBundle
from tests.helpers import EagerAsLoaded, run
from tests.integration.test_cli import cli

BENCH = [
    "stages=[build,compile,serialize,reload,verify,bench,package]",
    "bench.warmup=2",
    "bench.iterations=10",
    "bench.rounds=2",
    "bench.baselines=[eager,fresh]",
]


@pytest.fixture(scope="module")
def benched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PublishedBundle]]:
    artifacts = tmp_path_factory.mktemp("bench")
    bundles = []
    for runtime in ("standard", "preallocated"):
        result = run(artifacts, "model=tiny_cnn", f"runtime={runtime}", *BENCH, "bench.policies=[cudagraphs]")
        assert result.bundle is not None
        bundles.append(result.bundle)
    return artifacts, bundles


def test_bench_stage_records_variants_leaving_out_policies_not_applied_when_backend_is_export(
    benched: tuple[Path, list[PublishedBundle]],
) -> None:
    _, bundles = benched
    bench = bundles[0].manifest.bench
    assert bench["policy"] == "standard"
    # The export backend has no engines to put cudagraphs on: its timing would be standard's.
    assert set(bench["latency"]) == {"loaded", "eager", "fresh"}
    assert set(bench["policies_not_applied"]) == {"cudagraphs"}
    preallocated = bundles[1].manifest.bench
    assert set(preallocated["latency"]) == {"loaded", "eager", "fresh"}
    assert set(preallocated["policies_not_applied"]) == {"preallocated", "cudagraphs"}
    for stats in bench["latency"].values():
        assert stats["iterations"] == 10
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert bench["load"]["load_seconds"] > 0 and bench["load"]["first_call_seconds"] > 0


def test_pipeline_publishes_benched_bundle_under_new_id_when_unbenched_one_exists(tmp_path: Path) -> None:
    plain = run(tmp_path, "model=tiny_cnn")
    assert plain.bundle is not None
    published = (plain.bundle.path / "manifest.json").read_bytes()
    benched = run(tmp_path, "model=tiny_cnn", *BENCH)
    assert benched.bundle is not None
    assert not benched.bundle.reused and benched.bundle.manifest.bench
    assert benched.bundle.manifest.bundle_id != plain.bundle.manifest.bundle_id
    # The bundle published first (and any .tar packed from it) is left as it was.
    assert (plain.bundle.path / "manifest.json").read_bytes() == published
    again = run(tmp_path, "model=tiny_cnn", *BENCH)
    assert again.bundle is not None and again.bundle.reused
    assert again.bundle.path == benched.bundle.path


def test_report_table_lists_each_variant_with_ratios_from_manifests_when_written(
    benched: tuple[Path, list[PublishedBundle]],
) -> None:
    artifacts, bundles = benched
    written = write_report(artifacts)
    assert written is not None
    table, picture = written
    assert picture.stat().st_size > 1000 and picture.read_bytes()[:4] == b"\x89PNG"
    lines = table.read_text().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == COLUMNS
    policy_table = lines[4 : lines.index("", 4)]
    rows = [
        dict(zip(COLUMNS, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in policy_table
    ]
    assert len(rows) == 6  # per bundle: loaded, eager, fresh (export applies no policy: none timed)
    loaded = [r for r in rows if r["variant"] == "loaded bundle"]
    assert sorted(r["policy"] for r in loaded) == ["preallocated (not applied)", "standard"]
    for bundle in bundles:
        latency = bundle.manifest.bench["latency"]
        row = next(r for r in loaded if r["policy"].startswith(bundle.manifest.bench["policy"]))
        assert float(row["median ms"]) == pytest.approx(latency["loaded"]["median_ms"], abs=1e-3)
        expected = latency["loaded"]["median_ms"] / latency["fresh"]["median_ms"]
        assert row["vs fresh"] == f"{expected:.2f}x"
        same = latency.get(f"fresh:{bundle.manifest.bench['policy']}", latency["fresh"])
        assert row["vs fresh same policy"] == f"{latency['loaded']['median_ms'] / same['median_ms']:.2f}x"
        assert float(row["compile s"]) == pytest.approx(bundle.manifest.timings["compile"], abs=0.05)
    fastest = lines[lines.index("# Fastest bundle per model, precision and policy") :]
    winners = [line.split("|") for line in fastest if line.startswith("| tiny_cnn")]
    # Policies the export bundles could not apply never win (the policy is the fourth cell).
    assert [cells[3].strip() for cells in winners] == ["standard"]
    # A benched bundle's id covers its stages and bench settings: its rebuild command keeps them.
    assert "`python -m pipeline model=tiny_cnn runtime=standard stages=[" in winners[0][7]


def test_report_exits_1_when_no_bundle_was_benchmarked(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 1


def test_bundle_bench_cli_writes_json_report_naming_policies_not_applied_when_run_on_export_bundle(
    benched: tuple[Path, list[PublishedBundle]], tmp_path: Path
) -> None:
    _, bundles = benched
    out = tmp_path / "bench.json"
    completed = cli(
        "pipeline.bundle",
        "bench",
        str(bundles[0].path),
        "--iterations",
        "6",
        "--warmup",
        "1",
        "--policies",
        "preallocated",
        "--json",
        str(out),
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(out.read_text())
    # An export bundle cannot apply preallocated: it is named, not timed as if it had been.
    assert set(report["latency"]) == {"loaded"} and set(report["policies_not_applied"]) == {"preallocated"}
    assert "policy preallocated" in completed.stderr and "not applied" in completed.stderr
    assert report["latency"]["loaded"]["iterations"] == 6


def test_bench_model_times_reduce_overhead_without_cuda_graphs_when_run_on_cpu() -> None:
    # A real torch.compile(mode="reduce-overhead"): on CPU inductor skips CUDA graphs and runs.
    eager = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    settings = BenchConfig(
        warmup=1, iterations=4, rounds=2, baselines=[Baseline.eager, Baseline.inductor_reduce_overhead]
    )
    report = bench_model(
        lambda policy: EagerAsLoaded(eager, policy),
        RuntimeConfig(),
        (torch.randn(2, 8),),
        settings,
        eager=eager,
    )
    assert list(report.latency) == ["loaded", "eager", "inductor_reduce_overhead"]
    assert report.latency["inductor_reduce_overhead"].iterations == 4
    assert report.extra_seconds["inductor_reduce_overhead_compile"] > 0
    assert "loaded vs peers" in dict(report_rows(report))
