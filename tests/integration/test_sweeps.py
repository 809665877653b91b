"""Multirun sweeps through Hydra launchers: submitit (local processes), Ray, and failed jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.runtime.loader import open_bundle
from pipeline.sweep import OUTCOME_NAME, JobOutcome, collect_outcomes
from tests.integration.test_cli import cli

GRID = ["model=tiny_cnn,tiny_bert", "runtime=standard,preallocated", "verify.random_input_sets=1"]


def sweep(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    sweep_dir = tmp_path / "sweep"
    completed = cli("pipeline", "-m", *args, f"artifacts_dir={tmp_path}", f"hydra.sweep.dir={sweep_dir}")
    return completed.returncode, completed.stdout + completed.stderr, sweep_dir


def summary_rows(sweep_dir: Path) -> list[list[str]]:
    lines = (sweep_dir / "summary.md").read_text().splitlines()[4:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def assert_four_verified_bundles(tmp_path: Path, sweep_dir: Path) -> None:
    bundles = sorted(p for p in (tmp_path / "bundles").iterdir() if not p.name.startswith("."))
    assert [re.sub(r"-[0-9a-f]{16}$", "", p.name) for p in bundles] == [
        "tiny_bert-fp32-preallocated-export",
        "tiny_bert-fp32-standard-export",
        "tiny_cnn-fp32-preallocated-export",
        "tiny_cnn-fp32-standard-export",
    ]
    for bundle in bundles:
        manifest = open_bundle(bundle).manifest
        assert manifest.verification["passed"]
    rows = summary_rows(sweep_dir)
    assert len(rows) == 4 and {row[2] for row in rows} == {"ok"} and {row[4] for row in rows} == {"PASS"}
    assert sorted(row[5] for row in rows) == [str(b) for b in bundles]


def test_sweep_on_submitit_local_builds_every_bundle_and_summary_when_run(tmp_path: Path) -> None:
    code, output, sweep_dir = sweep(tmp_path, "hydra/launcher=local", *GRID)
    assert code == 0, output[-3000:]
    assert (sweep_dir / ".submitit").is_dir()  # the jobs really ran as submitit processes
    assert_four_verified_bundles(tmp_path, sweep_dir)


def test_sweep_on_local_ray_cluster_builds_every_bundle_and_summary_when_run(tmp_path: Path) -> None:
    code, output, sweep_dir = sweep(
        tmp_path, "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2", *GRID
    )
    assert code == 0, output[-3000:]
    assert "_run_job pid=" in output  # output relayed from Ray worker processes
    assert_four_verified_bundles(tmp_path, sweep_dir)


def test_sweep_reports_failed_job_and_keeps_the_others_when_one_job_fails(tmp_path: Path) -> None:
    code, output, sweep_dir = sweep(
        tmp_path,
        "model=tiny_cnn",
        "model.architecture._target_=pipeline.models.zoo.small_cnn,tests.helpers.noisy_model",
        "verify.random_input_sets=0",
    )
    assert code == 1
    rows = summary_rows(sweep_dir)
    assert [row[2] for row in rows] == ["ok", "failed"]
    assert "verification failed, nothing published" in rows[1][6]
    assert "failed: job 1" in output
    assert Path(rows[0][5]).is_dir()


def test_collect_outcomes_counts_a_job_without_outcome_as_crashed(tmp_path: Path) -> None:
    for job in ("0", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
    JobOutcome(job="0", overrides=["model=tiny_cnn"], status="ok", bundle="b").write(tmp_path / "0")
    outcomes = collect_outcomes(tmp_path)
    assert [(o.job, o.status) for o in outcomes] == [("0", "ok"), ("1", "failed")]
    assert "crashed" in outcomes[1].error
    assert json.loads((tmp_path / "0" / OUTCOME_NAME).read_text())["bundle"] == "b"


@pytest.mark.parametrize("launcher", ["local", "slurm", "ray_local"])
def test_launcher_configs_compose_when_selected(launcher: str) -> None:
    completed = cli("pipeline", f"hydra/launcher={launcher}", "--cfg", "hydra", "--package", "hydra.launcher")
    assert completed.returncode == 0, completed.stderr
    assert "_target_: hydra_plugins." in completed.stdout
