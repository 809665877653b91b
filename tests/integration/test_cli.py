"""The command lines as users and CI jobs call them, in subprocesses: exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.stages.package import PublishedBundle
from tests.helpers import cli, flip_byte


def test_cli_exits_2_with_one_line_listing_models_when_model_is_unknown() -> None:
    completed = cli("pipeline", "model=bret")
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert lines == [
        "error: model=bret: no such option in config group 'model'; "
        "available: bert, bert_dynamic, resnet152, resnet50, tiny_bert, tiny_bert_dynamic, tiny_cnn"
    ]
    assert "Traceback" not in completed.stderr


def test_cli_exits_2_naming_the_key_when_compile_key_is_misspelled() -> None:
    completed = cli("pipeline", "compile.lazy_engin_init=true")
    assert completed.returncode == 2
    assert len(completed.stderr.strip().splitlines()) == 1
    assert "compile.lazy_engin_init: unknown key" in completed.stderr
    assert "lazy_engine_init" in completed.stderr


def test_cli_exits_2_when_combination_is_contradictory() -> None:
    completed = cli(
        "pipeline",
        "runtime=cudagraphs",
        "runtime.dynamic_allocation=true",
        "compile.dynamically_allocate_resources=true",
    )
    assert completed.returncode == 2
    assert "cannot be combined" in completed.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cli_exits_2_explaining_why_when_tensorrt_is_requested_without_gpu() -> None:
    completed = cli("pipeline", "model=tiny_cnn", "backend=tensorrt")
    assert completed.returncode == 2
    assert "backend=tensorrt" in completed.stderr and "no CUDA GPU" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_cli_publishes_bundle_and_prints_its_path_when_config_is_valid(tmp_path: Path) -> None:
    completed = cli("pipeline", "model=tiny_cnn", f"artifacts_dir={tmp_path}", "runtime=preallocated")
    assert completed.returncode == 0, completed.stderr
    bundle = Path(completed.stdout.strip().splitlines()[-1].removeprefix("bundle: "))
    assert bundle.parent == tmp_path / "bundles" and (bundle / "manifest.json").is_file()
    assert "pipeline summary" in completed.stderr
    assert "recorded, NOT applied" in completed.stderr


def test_cli_exits_1_marks_verify_failed_with_hint_and_publishes_nothing_when_verification_fails(
    tmp_path: Path,
) -> None:
    completed = cli(
        "pipeline",
        "model=tiny_cnn",
        f"artifacts_dir={tmp_path}",
        "model.architecture._target_=tests.helpers.noisy_model",
    )
    assert completed.returncode == 1
    assert "verification failed, nothing published" in completed.stderr
    assert "✓ verify" not in completed.stderr and "✗ verify failed" in completed.stderr
    assert "hint: a model that is not deterministic" in completed.stderr
    assert "verify.fp32.atol=0.01 (now 0.001)" in completed.stderr
    assert "bundle:" not in completed.stdout


def test_cli_explains_failed_stage_in_short_block_with_log_when_model_cannot_be_exported(
    tmp_path: Path,
) -> None:
    completed = cli(
        "pipeline",
        "model=tiny_cnn",
        f"artifacts_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "model.architecture._target_=tests.helpers.data_dependent_model",
    )
    assert completed.returncode == 1
    assert "error: compile failed for model tiny_cnn" in completed.stderr
    assert "cause: GuardOnDataDependentSymNode: Could not guard on data-dependent" in completed.stderr
    assert "hint: torch.export cannot branch on tensor values" in completed.stderr
    log = tmp_path / "run" / "error.log"
    assert f"full traceback: {log}" in completed.stderr.replace("\n", "")
    assert "Traceback (most recent call last)" in log.read_text()
    assert "Traceback" not in completed.stderr and "Error executing job" not in completed.stderr
    # torch.export's partial graph of the failed trace goes to the log, not above the block.
    assert "def forward" not in completed.stderr and "def forward" in log.read_text()
    assert completed.stderr.index("error: compile failed") < 400, completed.stderr[:600]
    assert "bundle:" not in completed.stdout
    assert not [p for p in (tmp_path / "bundles").glob("*") if not p.name.startswith(".")]


def test_bundle_verify_passes_then_fails_naming_file_when_one_byte_flips(bundle_copy: Path) -> None:
    ok = cli("pipeline.bundle", "verify", str(bundle_copy))
    assert ok.returncode == 0 and ok.stdout.startswith("PASS")
    flip_byte(bundle_copy / "model" / "model.pt2")
    bad = cli("pipeline.bundle", "verify", str(bundle_copy))
    assert bad.returncode == 1
    assert "model/model.pt2: sha256 does not match" in bad.stderr


def test_bundle_inspect_prints_manifest_when_asked(cnn_bundle: PublishedBundle) -> None:
    table = cli("pipeline.bundle", "inspect", str(cnn_bundle.path))
    assert table.returncode == 0
    assert cnn_bundle.manifest.bundle_id in table.stdout and "tiny_cnn" in table.stdout
    raw = cli("pipeline.bundle", "inspect", "--json", str(cnn_bundle.path))
    assert json.loads(raw.stdout)["bundle_id"] == cnn_bundle.manifest.bundle_id


def test_bundle_pack_writes_archive_that_verifies_when_shipped(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    target = tmp_path / "ship.tar.gz"
    packed = cli("pipeline.bundle", "pack", str(cnn_bundle.path), "-o", str(target))
    assert packed.returncode == 0 and Path(packed.stdout.strip()) == target
    assert cli("pipeline.bundle", "verify", str(target)).returncode == 0


def test_bundle_tool_exits_1_when_path_is_not_a_bundle(tmp_path: Path) -> None:
    completed = cli("pipeline.bundle", "verify", str(tmp_path))
    assert completed.returncode == 1 and "not a bundle" in completed.stderr


def test_cli_builds_bert_base_with_preallocated_policy_recorded_when_run_on_cpu(tmp_path: Path) -> None:
    completed = cli(
        "pipeline",
        "model=bert",
        "runtime=preallocated",
        f"artifacts_dir={tmp_path}",
        "verify.random_input_sets=1",
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    bundle = Path(completed.stdout.strip().splitlines()[-1].removeprefix("bundle: "))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["backend"] == "export" and manifest["verification"]["passed"]
    assert manifest["runtime"]["policy"]["name"] == "preallocated"
    assert manifest["runtime"]["applied"] is False


def test_cli_exits_2_with_one_line_naming_the_file_when_config_dir_model_has_unknown_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "model").mkdir()
    yaml_file = tmp_path / "model" / "mine.yaml"
    yaml_file.write_text(
        "name: mine\narchitecture: {_target_: pipeline.models.zoo.small_cnn}\n"
        "input:\n  - {name: images, shape: [1, 3, 16, 16]}\n"
    )
    completed = cli("pipeline", "--config-dir", str(tmp_path), "model=mine", f"artifacts_dir={tmp_path}")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"error: {yaml_file}:3: model.input: unknown key; did you mean 'inputs'? "
        "allowed: name, architecture, weights, inputs, dims, bind_inputs"
    ]


def test_cli_keeps_torch_log_lines_out_of_the_terminal_and_in_error_log_when_a_stage_fails(
    tmp_path: Path,
) -> None:
    completed = cli(
        "pipeline",
        "model=tiny_cnn",
        "model.architecture._target_=tests.helpers.torch_logging_model",
        f"artifacts_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert completed.returncode == 1, completed.stderr
    assert "a warning for error.log" not in completed.stderr
    assert "compile failed for model tiny_cnn" in completed.stderr
    assert "a warning for error.log" in (tmp_path / "run" / "error.log").read_text()
