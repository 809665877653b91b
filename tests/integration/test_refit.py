"""Refit on CPU: every refusal happens before GPU work, and the publishing logic keeps lineage.

Real engine refits run in ``tests/gpu/test_refit.py``. Here a bundle of the tiny BERT is
relabelled as a TensorRT bundle (manifest rewritten, digests intact) to reach the checks that
need one, and :class:`ReexportBackend` stands in for TensorRT where a test needs a refit to
happen: it "refits" by exporting the model with the new weights, which is what a correct refit
must be equivalent to.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.backends.base import RefitReport, RefitRequest
from pipeline.backends.export import ExportBackend
from pipeline.backends.exported import dynamic_shapes
from pipeline.config import compose, resolve
from pipeline.config.schema import RuntimeConfig
from pipeline.errors import (
    BundleError,
    ConfigError,
    NotRefittableError,
    VerificationError,
    WeightsMismatchError,
)
from pipeline.models import state_dict_digest
from pipeline.refit import refit_bundle
from pipeline.refit import workflow as refit_workflow
from pipeline.refit.cli import print_summary
from pipeline.runtime.base import FileSource, SavedArtifact
from pipeline.runtime.engine_graph import EngineRecord
from pipeline.runtime.executor import EngineExecutor, LoadedArtifact, RunnerKind
from pipeline.runtime.format import GOLDEN_NAME, describe_files, read_manifest, write_manifest
from pipeline.runtime.loader import open_bundle
from pipeline.runtime.policy import PolicyReport
from pipeline.stages.build import instantiate_model
from pipeline.stages.package import PublishedBundle
from tests.helpers import cli


def as_tensorrt_bundle(source: Path, target: Path, immutable_weights: bool) -> Path:
    """Copy a CPU bundle and relabel it a one-engine TensorRT bundle (a stand-in engine file
    beside its model); digests stay valid."""
    shutil.copytree(source, target)
    manifest = read_manifest(target)
    manifest.backend = "tensorrt"
    manifest.engine_count = 1
    manifest.engines = [STAND_IN_ENGINE.to_dict()]
    (target / STAND_IN_ENGINE.file).parent.mkdir()
    (target / STAND_IN_ENGINE.file).write_bytes(b"stand-in engine")
    manifest.compile_settings = {**manifest.compile_settings, "immutable_weights": immutable_weights}
    manifest.files = describe_files(target)
    write_manifest(target, manifest)
    return target


STAND_IN_ENGINE = EngineRecord(
    attribute="_run_on_acc_0_engine",
    file="engines/_run_on_acc_0.engine",
    engine_index=1,
    outputs=1,
    serialized_info=["abi", ""],
)


def tiny_bert(seed: int) -> nn.Module:
    return instantiate_model(resolve(compose(["model=tiny_bert", f"model.weights.seed={seed}"])).model)


class ReexportBackend(ExportBackend):
    """CPU stand-in for a TensorRT refit: exports the model with the new weights.

    With ``keep_old_weights`` it is a broken refit that silently keeps the parent's model.
    """

    def __init__(self, keep_old_weights: bool = False) -> None:
        self.keep_old_weights = keep_old_weights

    def refit(self, request: RefitRequest) -> RefitReport:
        model_file = request.target / request.artifact.model_file
        model_file.parent.mkdir(parents=True, exist_ok=True)
        if self.keep_old_weights:
            model_file.write_bytes(request.files.read(request.artifact.model_file))
        else:
            program = torch.export.export(
                request.model, request.example_inputs, dynamic_shapes=dynamic_shapes(request.specs)
            )
            torch.export.save(program, str(model_file))
        for record in request.artifact.engines:
            (request.target / record.file).parent.mkdir(parents=True, exist_ok=True)
            (request.target / record.file).write_bytes(request.files.read(record.file))
        return RefitReport(engines=1, artifact=request.artifact)

    def load(
        self,
        artifact: SavedArtifact,
        files: FileSource,
        device: torch.device,
        policy: RuntimeConfig | None = None,
    ) -> LoadedArtifact:
        loaded = super().load(artifact, files, device, policy)
        return LoadedArtifact(loaded.module, StandInEngine())


class StandInEngine(EngineExecutor):
    """The stand-in engine's executor: it takes every policy, as one engine."""

    runner = RunnerKind.cpp

    def configure(self, policy: RuntimeConfig, previous: RuntimeConfig | None = None) -> PolicyReport:
        self._policy = policy
        return PolicyReport(policy=policy, applied=True, engines_configured=1)


@pytest.fixture
def refittable(bert_bundle: PublishedBundle, tmp_path: Path) -> Path:
    return as_tensorrt_bundle(bert_bundle.path, tmp_path / "refittable", immutable_weights=False)


@pytest.fixture
def new_weights(tmp_path: Path) -> Path:
    path = tmp_path / "new.safetensors"
    save_file(tiny_bert(seed=7).state_dict(), str(path))
    return path


@pytest.fixture
def no_gpu_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the refit gets as far as choosing a backend for the engines."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("GPU work started before the request was checked")

    monkeypatch.setattr(refit_workflow, "backend_for_manifest", refuse)


def use_backend(monkeypatch: pytest.MonkeyPatch, backend: ExportBackend) -> None:
    monkeypatch.setattr(refit_workflow, "backend_for_manifest", lambda manifest: backend)


def test_refit_cli_exits_2_saying_to_rebuild_when_bundle_is_from_export_backend(
    bert_bundle: PublishedBundle, new_weights: Path
) -> None:
    completed = cli("pipeline.refit", f"bundle={bert_bundle.path}", f"weights={new_weights}")
    assert completed.returncode == 2
    assert "export backend, which has no TensorRT engines to refit" in completed.stderr
    assert "python -m pipeline model=tiny_bert" in completed.stderr
    assert f"model.weights.name_or_path={new_weights}" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_refit_cli_exits_2_with_usage_when_weights_are_not_given(bert_bundle: PublishedBundle) -> None:
    completed = cli("pipeline.refit", f"bundle={bert_bundle.path}")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "error: weights: a value is required (usage: python -m pipeline.refit bundle=PATH "
        "weights=SOURCE [artifacts_dir=DIR] [force=true])"
    ]


def test_refit_refuses_naming_the_compile_flag_when_engines_have_immutable_weights(
    bert_bundle: PublishedBundle, new_weights: Path, tmp_path: Path, no_gpu_work: None
) -> None:
    immutable = as_tensorrt_bundle(bert_bundle.path, tmp_path / "immutable", immutable_weights=True)
    with pytest.raises(NotRefittableError, match="immutable_weights=true") as raised:
        refit_bundle(immutable, new_weights, artifacts_dir=tmp_path)
    assert "compile.immutable_weights=false" in str(raised.value)


def test_refit_lists_missing_unexpected_and_misshaped_names_when_weights_do_not_fit(
    refittable: Path, tmp_path: Path, no_gpu_work: None
) -> None:
    weights = tiny_bert(seed=7).state_dict()
    del weights["pooler.dense.bias"]
    weights["classifier.weight"] = torch.zeros(2, 64)
    weights["embeddings.word_embeddings.weight"] = torch.zeros(5, 64)
    path = tmp_path / "mismatched.pt"
    torch.save(weights, path)
    with pytest.raises(WeightsMismatchError) as raised:
        refit_bundle(refittable, path, artifacts_dir=tmp_path)
    message = str(raised.value)
    assert "1 missing [pooler.dense.bias]" in message
    assert "1 unexpected [classifier.weight]" in message
    assert "1 mis-shaped [embeddings.word_embeddings.weight [5, 64] vs model [1000, 64]]" in message


def test_refit_cli_exits_2_with_the_mismatch_when_weights_are_for_another_model(
    refittable: Path, tmp_path: Path
) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(instantiate_model(resolve(compose(["model=tiny_cnn"])).model).state_dict(), path)
    completed = cli("pipeline.refit", f"bundle={refittable}", f"weights={path}", f"artifacts_dir={tmp_path}")
    assert completed.returncode == 2
    assert "do not match the bundle's architecture" in completed.stderr
    assert "missing [embeddings.LayerNorm.bias" in completed.stderr
    assert "unexpected [features.0.bias" in completed.stderr


def test_refit_refuses_when_weights_are_the_bundles_own(
    refittable: Path, tmp_path: Path, no_gpu_work: None
) -> None:
    path = tmp_path / "same.pt"
    torch.save(tiny_bert(seed=0).state_dict(), path)
    with pytest.raises(ConfigError, match="identical to the bundle's own weights"):
        refit_bundle(refittable, path, artifacts_dir=tmp_path)


def test_refit_refuses_when_local_config_describes_another_architecture(
    refittable: Path, new_weights: Path, tmp_path: Path, no_gpu_work: None
) -> None:
    manifest = read_manifest(refittable)
    architecture = {**manifest.config["model"]["architecture"], "num_hidden_layers": 3}
    manifest.config = {**manifest.config, "model": {**manifest.config["model"], "architecture": architecture}}
    write_manifest(refittable, manifest)
    with pytest.raises(NotRefittableError, match=r"architecture\.num_hidden_layers: the bundle records 3"):
        refit_bundle(refittable, new_weights, artifacts_dir=tmp_path)


def test_refit_refuses_before_loading_weights_when_bundle_is_tampered(
    refittable: Path, new_weights: Path, tmp_path: Path, no_gpu_work: None
) -> None:
    golden = refittable / GOLDEN_NAME
    golden.write_bytes(golden.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"golden\.safetensors: size"):
        refit_bundle(refittable, new_weights, artifacts_dir=tmp_path)


def test_refit_publishes_verified_bundle_recording_parent_and_new_weights_when_refitted(
    refittable: Path, new_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, ReexportBackend())
    parent = read_manifest(refittable)
    result = refit_bundle(refittable, new_weights, artifacts_dir=tmp_path / "out")

    opened = open_bundle(result.bundle.path)
    root, manifest = opened.root, opened.manifest
    new_model = tiny_bert(seed=7)
    assert manifest.weights["refit_from"] == {
        "bundle_id": parent.bundle_id,
        "weights_sha256": parent.weights["sha256"],
    }
    assert manifest.weights["sha256"] == state_dict_digest(new_model)
    assert manifest.weights["name_or_path"] == str(new_weights)
    assert manifest.bundle_id != parent.bundle_id
    assert manifest.runtime["policy"] == parent.runtime["policy"]
    assert manifest.verification["passed"]

    golden = load_file(str(root / GOLDEN_NAME))
    names = ("input_ids", "attention_mask", "token_type_ids")
    with torch.no_grad():
        expected = new_model(**{name: golden[f"input.{name}"] for name in names}).last_hidden_state
    old = load_file(str(refittable / GOLDEN_NAME))["output.0"]
    torch.testing.assert_close(golden["output.0"], expected)
    assert not torch.allclose(golden["output.0"], old, atol=1e-3)
    assert result.policy is not None and result.policy.policy.name == "preallocated"


def test_refit_reuses_the_bundle_when_same_weights_are_refitted_again_unless_forced(
    refittable: Path, new_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, ReexportBackend())
    first = refit_bundle(refittable, new_weights, artifacts_dir=tmp_path)
    again = refit_bundle(refittable, new_weights, artifacts_dir=tmp_path)
    forced = refit_bundle(refittable, new_weights, artifacts_dir=tmp_path, force=True)
    assert again.bundle.reused and again.bundle.path == first.bundle.path
    assert not forced.bundle.reused and forced.bundle.path == first.bundle.path


def test_refit_refits_a_refitted_bundle_when_given_further_weights(
    refittable: Path, new_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, ReexportBackend())
    first = refit_bundle(refittable, new_weights, artifacts_dir=tmp_path)
    further = tmp_path / "further.pt"
    torch.save(tiny_bert(seed=8).state_dict(), further)
    second = refit_bundle(first.bundle.path, further, artifacts_dir=tmp_path)
    assert second.bundle.manifest.weights["refit_from"]["bundle_id"] == first.bundle.manifest.bundle_id
    assert second.bundle.manifest.config == read_manifest(refittable).config


def test_refit_publishes_nothing_when_refitted_engines_disagree_with_new_weights(
    refittable: Path, new_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, ReexportBackend(keep_old_weights=True))
    with pytest.raises(VerificationError, match="nothing published"):
        refit_bundle(refittable, new_weights, artifacts_dir=tmp_path / "out")
    assert not [p for p in (tmp_path / "out" / "bundles").iterdir() if not p.name.startswith(".")]


def test_refit_accepts_weights_from_pretrained_directory_when_saved_by_transformers(
    refittable: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, ReexportBackend())
    model = tiny_bert(seed=7)
    model.save_pretrained(tmp_path / "pretrained")
    result = refit_bundle(refittable, tmp_path / "pretrained", artifacts_dir=tmp_path / "out")
    assert result.bundle.manifest.weights["sha256"] == state_dict_digest(model)


def test_refit_summary_ends_with_the_bundle_line_scripts_read_when_refit_succeeds(
    refittable: Path,
    new_weights: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_backend(monkeypatch, ReexportBackend())
    result = refit_bundle(refittable, new_weights, artifacts_dir=tmp_path)
    capsys.readouterr()
    print_summary(result)
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == f"bundle: {result.bundle.path}"
    assert "preallocated (applied)" in captured.err
    assert read_manifest(refittable).bundle_id in captured.err
