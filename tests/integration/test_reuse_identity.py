"""Reuse that cannot be stale: what a bundle id covers, damaged bundles, the rebuild command."""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import pytest
import torch

from pipeline import identity, load_bundle
from pipeline.cli import split_config_dirs
from pipeline.config import compose, resolve
from pipeline.config.loading import CONFIG_DIR
from pipeline.report import rebuild_command
from pipeline.runner import RunResult, run_pipeline
from pipeline.runtime.exported import ExportRuntime
from pipeline.runtime.format import read_manifest
from pipeline.stages.protocol import StepStatus
from tests.helpers import flip_byte, run

USER_MODEL = '''
from pipeline.models.zoo import small_cnn


def factory(weights, **architecture):
    """The user's own model: here the zoo's small CNN{suffix}."""
    return small_cnn(weights, **architecture)
'''


def user_model(directory: Path, monkeypatch: pytest.MonkeyPatch, suffix: str = "") -> str:
    """Write a model module of the user's own under ``directory``; its ``_target_``."""
    module = f"user_models_{uuid.uuid4().hex[:8]}"
    (directory / f"{module}.py").write_text(USER_MODEL.format(suffix=suffix), encoding="utf-8")
    monkeypatch.syspath_prepend(str(directory))
    return f"{module}.factory"


def bundle_of(result: RunResult) -> tuple[str, bool]:
    assert result.bundle is not None
    return result.bundle.manifest.bundle_id, result.bundle.reused


def test_pipeline_builds_a_new_bundle_when_the_user_model_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = user_model(tmp_path, monkeypatch)
    override = f"model.architecture._target_={target}"
    first_id, _ = bundle_of(run(tmp_path, "model=tiny_cnn", override))
    assert bundle_of(run(tmp_path, "model=tiny_cnn", override)) == (first_id, True)
    module_file = tmp_path / f"{target.partition('.')[0]}.py"
    module_file.write_text(module_file.read_text() + "\n# edited: a new layer would go here\n")
    changed = run(tmp_path, "model=tiny_cnn", override)
    changed_id, reused = bundle_of(changed)
    assert changed_id != first_id and not reused
    assert changed.bundle is not None
    assert changed.bundle.manifest.environment[identity.MODEL_SOURCE_KEY].startswith(target.partition(".")[0])


def test_model_source_is_not_hashed_when_target_is_installed_code() -> None:
    assert identity.model_source({"_target_": "pipeline.models.zoo.small_cnn"}) is None
    assert identity.model_source({"_target_": "torchvision.models.resnet18"}) is None


@pytest.mark.parametrize("library", ["python", "torch", "torchvision", "transformers", "backend"])
def test_pipeline_builds_a_new_bundle_when_a_library_version_changes(
    library: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_id, _ = bundle_of(run(tmp_path, "model=tiny_cnn"))
    if library == "torch":  # read by the host's versions and the backend's alike
        monkeypatch.setattr(torch, "__version__", "9.9.0")
    elif library == "backend":  # the backend's own versions (Torch-TensorRT, TensorRT for engines)
        recorded = ExportRuntime.environment
        monkeypatch.setattr(
            ExportRuntime,
            "environment",
            lambda self, device=None: {**recorded(self), "torch_tensorrt": "9.9"},
        )
    else:
        versions = identity.library_versions
        monkeypatch.setattr(identity, "library_versions", lambda: {**versions(), library: "9.9"})
    upgraded_id, reused = bundle_of(run(tmp_path, "model=tiny_cnn"))
    assert upgraded_id != first_id and not reused


def damage_model_file(root: Path) -> None:
    flip_byte(root / "model" / "model.pt2")


def add_stray_file(root: Path) -> None:
    (root / "golden.safetensors.bak").write_bytes(b"stray")


def edit_manifest_value(root: Path) -> None:
    path = root / "manifest.json"
    path.write_text(path.read_text().replace('"passed": true', '"passed": false', 1))


@pytest.mark.parametrize("damage", [damage_model_file, add_stray_file, edit_manifest_value])
def test_pipeline_rebuilds_a_published_bundle_with_a_note_when_its_files_are_damaged(
    damage: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run(tmp_path, "model=tiny_cnn")
    assert first.bundle is not None
    assert callable(damage)
    damage(first.bundle.path)
    capsys.readouterr()
    again = run(tmp_path, "model=tiny_cnn")
    assert again.bundle is not None and not again.bundle.reused
    assert again.bundle.manifest.bundle_id == first.bundle.manifest.bundle_id
    notes = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(notes) == 1 and "building it again" in notes[0]
    assert load_bundle(again.bundle.path).manifest.bundle_id == first.bundle.manifest.bundle_id
    assert [step.status for step in again.steps if step.name == "compile"] == [StepStatus.done]


def test_report_rebuild_command_reproduces_the_bundle_id_when_run_with_a_config_dir_and_bench(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    tiny = (CONFIG_DIR / "model" / "tiny_cnn.yaml").read_text(encoding="utf-8")
    (conf / "mine.yaml").write_text(tiny.replace("name: tiny_cnn", "name: mine"), encoding="utf-8")
    settings = [
        "model=mine",
        "runtime=preallocated",
        "compile.min_block_size=3",
        "verify.random_input_sets=1",
        "stages=[build,compile,serialize,reload,verify,bench,package]",
        "bench.warmup=0",
        "bench.iterations=2",
        "bench.rounds=1",
        "bench.baselines=[eager]",
    ]
    store = f"artifacts_dir={tmp_path / 'artifacts'}"
    config_dir = str(tmp_path / "myconf")
    built = run_pipeline(
        resolve(compose([*settings, store], config_dirs=[config_dir])),
        [f"--config-dir={config_dir}", *settings, store],
    )
    assert built.bundle is not None
    manifest = read_manifest(built.bundle.path)
    command = rebuild_command(manifest, "preallocated")
    assert store not in command
    config_dirs, arguments = split_config_dirs(shlex.split(command)[3:])
    assert config_dirs == [config_dir]
    again = run_pipeline(resolve(compose([*arguments, store], config_dirs=config_dirs)), arguments)
    assert bundle_of(again) == (manifest.bundle_id, True)
