"""``tune`` on a real tritonserver with a tiny model and a small grid: the winner, its repository,
the plot and the results a user reads."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.serve.repository import export_triton
from pipeline.serve.server import TritonServer
from pipeline.serve.triton_config import TritonModelConfig
from pipeline.serve.tune import (
    PLOT_FILE,
    REPOSITORY_DIR,
    RESULTS_FILE,
    SERVER_LOG,
    Candidate,
    Level,
    Measured,
    TuneGrid,
    TuneSettings,
    pareto_front,
    tune,
)
from pipeline.stages.package import PublishedBundle
from tests.helpers import cli
from tests.serve.helpers import alive, descendants, start_cli

pytestmark = pytest.mark.usefixtures("triton_installed")


def level(concurrency: int, throughput: float, p99: float, errors: int = 0) -> Level:
    return Level(concurrency, 100, errors, throughput, p99 / 2, p99)


def test_tune_grid_lists_every_combination_when_model_batches() -> None:
    grid = TuneGrid(
        max_batch_sizes=(4, 8), queue_delays_us=(0, 100), instances=(1,), policies=(None, "cudagraphs")
    )
    candidates = grid.candidates(bundle_max_batch=8)
    assert len(candidates) == 8
    assert Candidate(8, 100, 1, "cudagraphs") in candidates


def test_tune_grid_defaults_to_a_quarter_and_the_maximum_when_no_batch_sizes_are_given() -> None:
    assert {c.max_batch_size for c in TuneGrid().candidates(bundle_max_batch=32)} == {8, 32}


def test_tune_grid_refuses_batch_sizes_over_the_engines_maximum() -> None:
    with pytest.raises(
        PipelineError, match=r"--max-batch \[64\]: the bundle's engines take batches of 1..32"
    ):
        TuneGrid(max_batch_sizes=(8, 64)).candidates(bundle_max_batch=32)


def test_measured_best_is_the_most_throughput_at_p99_within_target_without_errors() -> None:
    measured = Measured(
        Candidate(8, 0, 1),
        "opt",
        [level(1, 100, 2), level(2, 180, 4), level(4, 300, 9, errors=1), level(8, 320, 12)],
    )
    assert measured.best(10.0) == level(2, 180, 4)
    assert measured.best(1.0) is None


def test_pareto_front_keeps_points_no_other_beats_on_latency_and_throughput() -> None:
    points = [(1.0, 100.0), (2.0, 90.0), (3.0, 250.0), (4.0, 240.0), (5.0, 400.0)]
    assert pareto_front(points) == [(1.0, 100.0), (3.0, 250.0), (5.0, 400.0)]


def test_tune_writes_results_plot_and_a_repository_that_serves_the_winner_when_run_on_tiny_cnn(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    settings = TuneSettings(
        target_p99_ms=2000.0,
        grid=TuneGrid(max_batch_sizes=(2, 8), queue_delays_us=(0,), instances=(1,)),
        seconds=0.5,
        warmup_s=0.2,
        max_concurrency=2,
        client_processes=2,  # concurrency 1 runs its callers here, 2 in two client processes
    )
    out = tmp_path / "tune"
    lines: list[str] = []
    report = tune(cnn_bundle.path, settings, out, progress=lines.append)

    # tiny_cnn's batch is dynamic: by default requests take the opt and the max shape.
    assert report.settings.shapes == ("opt", "max")
    assert [(r.candidate.max_batch_size, r.shape) for r in report.results] == [
        (2, "opt"),
        (2, "max"),
        (8, "opt"),
        (8, "max"),
    ]
    assert all([lvl.concurrency for lvl in r.levels] == [1, 2] for r in report.results)
    assert all(lvl.requests > 0 and lvl.errors == 0 for r in report.results for lvl in r.levels)
    assert report.serial.concurrency == 1 and report.serial.inferences_per_s > 0
    assert report.winner is not None
    best = report.winner.best(settings.target_p99_ms)
    assert best is not None
    on_opt = [r.best(2000.0) for r in report.results if r.shape == "opt"]
    assert best.inferences_per_s == max(level.inferences_per_s for level in on_opt if level is not None)
    assert lines[0].startswith("starting tritonserver") and lines[1].startswith("tritonserver ready in")
    assert next(line for line in lines if line.startswith(("batch-1", "["))).startswith("batch-1 serial:")
    assert sum(line.startswith("loaded ") for line in lines) == 5  # the serial baseline and 4 measured
    assert sum(line.startswith("[") for line in lines) == 4
    assert "winner: batch<=" in report.table()

    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["complete"] is True
    assert results["winner"]["max_batch_size"] == report.winner.candidate.max_batch_size
    assert "Started HTTPService" in (out / SERVER_LOG).read_text()
    assert results["command"].startswith("python -m pipeline.serve tune ")
    assert (out / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = (out / REPOSITORY_DIR / "tiny_cnn" / "config.pbtxt").read_text()
    assert f"max_batch_size: {report.winner.candidate.max_batch_size}\n" in config


def test_tune_cli_refuses_in_one_line_when_output_directory_is_not_empty(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    (tmp_path / "kept.txt").write_text("a user's file")
    completed = cli("pipeline.serve", "tune", str(cnn_bundle.path), "--p99-ms", "5", "--out", str(tmp_path))
    assert completed.returncode == 1
    assert completed.stderr.strip() == (
        f"error: {tmp_path}: exists and is not an empty directory; pick another --out"
    )
    assert (tmp_path / "kept.txt").read_text() == "a user's file"


def test_tune_cli_refuses_in_one_line_when_a_shape_is_not_a_golden_set(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    completed = cli(
        "pipeline.serve",
        "tune",
        str(cnn_bundle.path),
        "--p99-ms",
        "5",
        "--shapes",
        "huge",
        "--out",
        str(tmp_path / "t"),
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().startswith("error: --shapes ['huge']: the bundle's golden sets are [")
    assert not (tmp_path / "t").exists()  # nothing written for a run that never started


def test_triton_backend_loads_the_bundle_under_the_runtime_policy_when_config_names_one(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    # tune's policy dimension: config.pbtxt's runtime_policy reaches load_bundle in the backend.
    def preallocated(config: TritonModelConfig) -> TritonModelConfig:
        return replace(config, runtime_policy="preallocated")

    exported = export_triton(cnn_bundle.path, tmp_path / "models", adjust=preallocated)
    assert 'key: "runtime_policy"' in (exported.model_dir / "config.pbtxt").read_text()
    with (tmp_path / "tritonserver.log").open("w") as log:
        server = TritonServer(tmp_path / "models", port=0, metrics_port=0, workdir=tmp_path, log=log)
        server.start(timeout_s=180)
        server.stop()
    # An export bundle has no engines to put a policy on: the backend says so, and serves it.
    assert (
        "under runtime=preallocated (not applied: runtime=preallocated configures TensorRT engines; "
        "the export backend has none): golden check passed"
    ) in (tmp_path / "tritonserver.log").read_text()


def test_tune_cli_stops_in_one_line_keeps_what_it_measured_and_leaves_no_process_when_sigterm_arrives(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    # Four configurations, about 3 s each here: the signal comes while the second one runs.
    args = ["--p99-ms", "2000", "--max-batch", "2,8", "--instances", "1,2", "--queue-delay-us", "0"]
    args += ["--shapes", "opt", "--seconds", "0.5", "--max-concurrency", "2", "--out", str(out)]
    process = start_cli("tune", str(cnn_bundle.path), *args)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("[1/4]"):
            break
    else:
        raise AssertionError(f"tune ended before it measured a configuration: {''.join(seen)[-3000:]}")
    children = descendants(process.pid)
    assert children  # tritonserver and its backend stub
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        f"interrupted (SIGTERM); server stopped; what was measured is in {out / RESULTS_FILE}"
    ), err
    assert "Traceback" not in err, err
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["complete"] is False
    assert [r["candidate"]["max_batch_size"] for r in results["results"]][:1] == [2]
    assert not [pid for pid in children if alive(pid)]
