"""The whole pipeline on tiny models, on CPU (export backend), and the bundles it publishes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline import load_bundle
from pipeline.bundle.pack import Compression, pack_bundle
from pipeline.config import Stage, WeightsConfig, config_dict
from pipeline.errors import BundleError, ConfigError, InputValidationError, VerificationError
from pipeline.models import make_inputs, state_dict_digest
from pipeline.runtime.format import MANIFEST_NAME, read_manifest
from pipeline.runtime.loader import verify_bundle
from pipeline.stages.compile import COMPILE_CACHE, CompileCache
from pipeline.stages.package import PublishedBundle
from tests.helpers import flip_byte, run, tied_output_model

CPU_CASES = [("tiny_cnn", "fp32"), ("tiny_cnn", "fp16"), ("tiny_bert", "fp32"), ("tiny_bert", "fp16")]


@pytest.mark.parametrize(("model", "precision"), CPU_CASES, ids=[f"{m}-{p}" for m, p in CPU_CASES])
def test_pipeline_publishes_verified_bundle_when_run_on_cpu(
    model: str, precision: str, tmp_path: Path
) -> None:
    result = run(tmp_path, f"model={model}", f"precision={precision}")
    assert result.bundle is not None and result.passed
    manifest = result.bundle.manifest
    assert manifest.backend == "export" and manifest.precision == precision
    assert manifest.verification["passed"]
    # tiny_cnn's batch is dynamic (1..8): its golden sets also cover min, max and a size between.
    shapes = {"golden-min", "golden-max", "golden-odd"} if model == "tiny_cnn" else set()
    assert {c["input_set"] for c in manifest.verification["comparisons"]} == {"golden", "random-1", *shapes}
    assert {f.path for f in manifest.files} == {"config.yaml", "golden.safetensors", "model/model.pt2"}
    assert set(result.seconds) == {stage.value for stage in Stage if stage is not Stage.bench}
    for key in ("python", "torch", "transformers", "cuda"):
        assert key in manifest.environment
    assert manifest.weights["source"] == "random" and len(manifest.weights["sha256"]) == 64
    assert not list(result.bundle.path.parent.glob(".staging-*"))


def test_pipeline_reuses_bundle_when_config_is_unchanged_and_rebuilds_when_forced(tmp_path: Path) -> None:
    first = run(tmp_path, "model=tiny_cnn")
    again = run(tmp_path, "model=tiny_cnn")
    assert again.bundle is not None and first.bundle is not None
    assert again.bundle.reused and again.bundle.path == first.bundle.path
    assert "compile" not in again.seconds
    forced = run(tmp_path, "model=tiny_cnn", "force=true")
    assert forced.bundle is not None and not forced.bundle.reused
    assert forced.bundle.path == first.bundle.path
    assert forced.bundle.manifest.created_at >= first.bundle.manifest.created_at


def test_pipeline_compiles_once_when_runs_in_one_process_differ_only_in_runtime_policy(
    tmp_path: Path,
) -> None:
    with COMPILE_CACHE.kept():  # as a sweep in one process holds it
        standard = run(tmp_path, "model=tiny_cnn")
        preallocated = run(tmp_path, "model=tiny_cnn", "runtime=preallocated")
    assert standard.bundle is not None and preallocated.bundle is not None
    assert preallocated.compiled is standard.compiled and "compile" not in preallocated.seconds
    assert preallocated.passed and preallocated.bundle.path != standard.bundle.path
    # The bundle records what compiling its engines cost, not the zero of the reuse.
    compiled_in = standard.bundle.manifest.timings["compile"]
    assert preallocated.bundle.manifest.timings["compile"] == compiled_in > 0


def test_pipeline_releases_compile_cache_when_run_returns_and_nobody_keeps_it(tmp_path: Path) -> None:
    first = run(tmp_path, "model=tiny_cnn")
    assert first.compiled is not None and first.bundle is not None
    assert (
        COMPILE_CACHE.get(
            CompileCache.key(config_dict(first.config), first.bundle.manifest.weights["sha256"])
        )
        is None
    )
    second = run(tmp_path, "model=tiny_cnn", "runtime=preallocated")
    assert second.compiled is not first.compiled and "compile" in second.seconds


@pytest.mark.parametrize("change", ["precision=fp16", "model.weights.seed=1", "force=true"])
def test_pipeline_compiles_again_when_engines_would_differ_or_forced(tmp_path: Path, change: str) -> None:
    with COMPILE_CACHE.kept():
        first = run(tmp_path, "model=tiny_cnn")
        second = run(tmp_path, "model=tiny_cnn", change)
    assert second.compiled is not first.compiled and "compile" in second.seconds
    assert second.passed


def test_pipeline_records_policy_as_not_applied_when_backend_is_export(bert_bundle: PublishedBundle) -> None:
    runtime = bert_bundle.manifest.runtime
    assert runtime["policy"]["name"] == "preallocated" and runtime["policy"]["pre_allocated_outputs"]
    assert runtime["applied"] is False
    assert "export backend" in runtime["reason"]


def test_pipeline_publishes_nothing_when_verification_fails(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="nothing published"):
        run(
            tmp_path,
            "model=tiny_cnn",
            "model.architecture._target_=tests.helpers.noisy_model",
        )
    bundles = tmp_path / "bundles"
    assert [p.name for p in bundles.iterdir() if not p.name.startswith(".")] == []
    assert not list(bundles.glob(".staging-*"))


def test_pipeline_stops_after_requested_stages_when_given_a_subset(tmp_path: Path) -> None:
    result = run(tmp_path, "model=tiny_cnn", "stages=[build,compile,serialize,reload,verify]")
    assert result.verified is not None and result.verified.report.passed
    assert result.bundle is None
    assert not [p for p in (tmp_path / "bundles").iterdir() if not p.name.startswith(".")]


def test_pipeline_records_pretrained_weights_when_loaded_from_local_directory(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(42)
    checkpoint = tmp_path / "checkpoint"
    source = BertModel(
        BertConfig(
            num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=1000
        )
    )
    source.save_pretrained(checkpoint)
    result = run(
        tmp_path,
        "model=tiny_bert",
        "model.weights.source=pretrained",
        f"model.weights.name_or_path={checkpoint}",
    )
    assert result.bundle is not None
    weights = result.bundle.manifest.weights
    assert weights["source"] == "pretrained" and weights["name_or_path"] == str(checkpoint)
    reloaded = BertModel.from_pretrained(checkpoint)
    assert weights["sha256"] == state_dict_digest(reloaded)


def test_load_bundle_reproduces_golden_outputs_when_loaded_from_directory(
    cnn_bundle: PublishedBundle,
) -> None:
    loaded = load_bundle(cnn_bundle.path)
    golden = load_file(str(cnn_bundle.path / "golden.safetensors"))
    outputs = loaded(golden["input.images"])
    torch.testing.assert_close(outputs[0], golden["output.0"])
    assert loaded.manifest.bundle_id == cnn_bundle.manifest.bundle_id


@pytest.mark.parametrize(
    ("name", "compression"),
    [
        ("shipped.tar", None),
        ("shipped.tar.gz", None),
        ("gzipped.tar", Compression.gz),
        ("plain.tgz", Compression.none),
    ],
)
def test_load_bundle_works_when_given_a_packed_archive(
    cnn_bundle: PublishedBundle, tmp_path: Path, name: str, compression: Compression | None
) -> None:
    archive = pack_bundle(cnn_bundle.path, tmp_path / name, compression)
    loaded = load_bundle(archive)
    assert loaded.manifest == cnn_bundle.manifest
    assert verify_bundle(archive).passed


def test_loaded_bundle_accepts_batch_sizes_in_declared_range_when_dimension_is_dynamic(
    cnn_bundle: PublishedBundle,
) -> None:
    loaded = load_bundle(cnn_bundle.path)
    spec = loaded.specs[0]
    for batch in (1, 8):
        images = torch.rand(batch, *spec.shape[1:])
        assert loaded(images)[0].shape == (batch, 10)
    with pytest.raises(InputValidationError, match="input 'images': shape"):
        loaded(torch.rand(9, *spec.shape[1:]))


def test_load_bundle_reports_policy_not_applied_when_overridden_on_export(
    cnn_bundle: PublishedBundle,
) -> None:
    loaded = load_bundle(cnn_bundle.path, runtime="cudagraphs")
    assert loaded.policy.name == "cudagraphs" and not loaded.policy_report.applied
    assert loaded.set_runtime("standard").applied


def bundle_files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["config.yaml", "golden.safetensors", "model/model.pt2"])
def test_load_bundle_refuses_without_deserializing_when_one_byte_is_flipped(
    name: str, bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append("called"))
    flip_byte(bundle_copy / name)
    with pytest.raises(BundleError, match=f"{name}: sha256 does not match"):
        load_bundle(bundle_copy)
    assert loads == []


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.75, 0.99])
def test_load_bundle_refuses_naming_manifest_when_one_byte_of_it_is_flipped(
    fraction: float, bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append("called"))
    manifest = bundle_copy / MANIFEST_NAME
    flip_byte(manifest, int(fraction * (manifest.stat().st_size - 1)))
    with pytest.raises(BundleError, match=r"manifest\.json"):
        load_bundle(bundle_copy)
    assert loads == []


def test_load_bundle_refuses_when_manifest_is_edited(bundle_copy: Path) -> None:
    manifest = bundle_copy / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"size": ', '"size": 1', 1))
    with pytest.raises(BundleError, match=r"manifest\.json: content does not match"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "extra.bin").write_bytes(b"x"), "extra.bin: file not listed"),
        (
            lambda root: (root / "golden.safetensors").unlink(),
            "golden.safetensors: listed in the manifest but missing",
        ),
        (lambda root: (root / MANIFEST_NAME).unlink(), "no manifest.json"),
        (lambda root: (root / "config.yaml").write_text("truncated"), "config.yaml: size"),
    ],
)
def test_load_bundle_names_the_file_when_bundle_is_incomplete_or_has_extras(
    damage, message: str, bundle_copy: Path
) -> None:  # type: ignore[no-untyped-def]
    damage(bundle_copy)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_pack_refuses_when_bundle_is_corrupt(bundle_copy: Path, tmp_path: Path) -> None:
    flip_byte(bundle_copy / "golden.safetensors")
    with pytest.raises(BundleError):
        pack_bundle(bundle_copy, tmp_path / "out.tar.gz")
    assert not (tmp_path / "out.tar.gz").exists()


def test_manifest_matches_files_on_disk_when_published(cnn_bundle: PublishedBundle) -> None:
    manifest = read_manifest(cnn_bundle.path)
    assert [f.path for f in manifest.files] == [
        p for p in bundle_files(cnn_bundle.path) if p != MANIFEST_NAME
    ]


def test_golden_inputs_are_reused_when_copied_bundle_is_verified(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(cnn_bundle.path, copy)
    report = verify_bundle(copy)
    assert report.passed and report.comparisons[0].input_set == "golden"
    assert make_inputs(load_bundle(copy).specs, 0)[0].shape == (2, 3, 32, 32)


def test_pipeline_names_the_input_whose_values_the_model_cannot_index_when_built(tmp_path: Path) -> None:
    # tiny_bert's embedding has 1000 rows; input_ids drawn up to 4999 index past it.
    with pytest.raises(ConfigError, match=r"model.inputs\[input_ids\] draws from \[0, 5000\)") as caught:
        run(tmp_path, "model=tiny_bert", "model.inputs.0.high=5000", "model.inputs.0.max_value=null")
    assert "token_type_ids" not in str(caught.value)
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())


TIED = (
    "model=tiny_cnn",
    "model.name=tied",
    "model.architecture._target_=tests.helpers.tied_output_model",
    "~model.architecture.channels",
    "~model.architecture.num_classes",
    "model.inputs.0.shape=[2,3,8,8]",
    "model.inputs.0.min_shape=[1,3,8,8]",
    "model.inputs.0.max_shape=[4,3,8,8]",
)


def test_pipeline_publishes_and_loaded_model_answers_every_name_when_outputs_are_tied(tmp_path: Path) -> None:
    result = run(tmp_path, *TIED)
    assert result.bundle is not None and verify_bundle(result.bundle.path).passed
    with load_bundle(result.bundle.path) as model:
        images = torch.rand(3, 3, 8, 8)
        outputs = model(images)
        assert outputs.names == ("logits", "scores", "hidden")
        eager = tied_output_model(WeightsConfig(seed=0))(images)
        for name in ("logits", "scores"):
            assert torch.allclose(outputs[name], eager[name], atol=1e-5), name
