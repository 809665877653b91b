"""Models as users bring them: shared dynamic dimensions verified across their range, named outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline import load_bundle
from pipeline.errors import InputValidationError
from pipeline.models import make_inputs
from pipeline.runtime.format import GOLDEN_NAME, describe_files, read_manifest, write_manifest
from pipeline.runtime.loader import verify_bundle
from pipeline.stages.build import build_model
from pipeline.stages.package import PublishedBundle
from tests.helpers import cli, config_for, run

GOLDEN_SETS = {"golden", "golden-min", "golden-max", "golden-odd"}


@pytest.fixture(scope="module")
def dynamic_bert(tmp_path_factory: pytest.TempPathFactory) -> PublishedBundle:
    result = run(tmp_path_factory.mktemp("dynamic"), "model=tiny_bert_dynamic", "backend=export")
    assert result.bundle is not None
    return result.bundle


def test_pipeline_verifies_every_golden_shape_when_inputs_share_batch_and_seq(
    dynamic_bert: PublishedBundle,
) -> None:
    manifest = dynamic_bert.manifest
    checked = {c["input_set"] for c in manifest.verification["comparisons"]}
    assert checked >= GOLDEN_SETS
    golden = load_file(str(dynamic_bert.path / GOLDEN_NAME))
    assert golden["min/input.input_ids"].shape == (1, 8)
    assert golden["max/input.token_type_ids"].shape == (8, 32)
    assert golden["input.input_ids"].shape == (1, 16)
    report = verify_bundle(dynamic_bert.path)
    assert report.passed and {c.input_set for c in report.comparisons} == GOLDEN_SETS


def test_bundle_verify_fails_on_max_shape_when_its_golden_output_is_wrong(
    dynamic_bert: PublishedBundle, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(dynamic_bert.path, tmp_path / "bundle"))
    golden = load_file(str(copy / GOLDEN_NAME))
    golden["max/output.0"] = golden["max/output.0"] + 1.0
    save_file(golden, str(copy / GOLDEN_NAME))
    manifest = read_manifest(copy)
    manifest.files = describe_files(copy)  # re-listed: only the comparison can catch it now
    write_manifest(copy, manifest)

    completed = cli("pipeline.bundle", "verify", str(copy))
    assert completed.returncode == 1
    failed = {c.input_set for c in verify_bundle(copy).comparisons if not c.passed}
    assert failed == {"golden-max"}


def test_loaded_bundle_matches_eager_at_any_batch_and_seq_when_both_are_in_range(
    dynamic_bert: PublishedBundle, tmp_path: Path
) -> None:
    loaded = load_bundle(dynamic_bert.path)
    eager = build_model(config_for(tmp_path, "model=tiny_bert_dynamic"), torch.device("cpu")).eager
    for sizes in ({"batch": 5, "seq": 20}, {"batch": 8, "seq": 9}, {"batch": 1, "seq": 32}):
        inputs = make_inputs(loaded.specs, 11, sizes=sizes)
        with torch.no_grad():
            expected = eager(*inputs)
        for actual, reference in zip(loaded(*inputs), expected, strict=True):
            torch.testing.assert_close(actual, reference)


def test_loaded_bundle_rejects_call_when_input_ids_and_token_type_ids_batches_differ(
    dynamic_bert: PublishedBundle,
) -> None:
    loaded = load_bundle(dynamic_bert.path)
    ids, mask, _ = make_inputs(loaded.specs, 0, sizes={"batch": 4, "seq": 12})
    *_, token_types = make_inputs(loaded.specs, 0, sizes={"batch": 3, "seq": 12})
    with pytest.raises(InputValidationError) as caught:
        loaded(ids, mask, token_types)
    assert "'input_ids' and 'token_type_ids' must agree on dimension 'batch': 4 vs 3" in str(caught.value)


def test_loaded_bundle_returns_outputs_by_name_when_model_returns_a_dict(tmp_path: Path) -> None:
    result = run(tmp_path, "model=tiny_cnn", "model.architecture._target_=tests.helpers.dict_output_model")
    assert result.bundle is not None
    assert [o["name"] for o in result.bundle.manifest.outputs] == ["logits", "features"]
    loaded = load_bundle(result.bundle.path)
    eager = build_model(result.config, torch.device("cpu")).eager.model
    inputs = make_inputs(loaded.specs, 3)
    outputs = loaded(*inputs)
    with torch.no_grad():
        expected = eager(*inputs)
    assert outputs.keys() == list(expected)
    for name, tensor in outputs.to_dict().items():
        torch.testing.assert_close(tensor, expected[name])
    torch.testing.assert_close(outputs[0], expected["logits"])
    inspect = cli("pipeline.bundle", "inspect", str(result.bundle.path))
    assert "logits [2, 5] float32" in inspect.stdout and "features [2, 4]" in inspect.stdout


def test_golden_sets_hold_padded_rows_when_the_model_declares_a_padding_mask(
    dynamic_bert: PublishedBundle,
) -> None:
    golden = load_file(str(dynamic_bert.path / GOLDEN_NAME))
    mask = golden["max/input.attention_mask"]
    lengths = mask.sum(dim=1)
    assert mask.shape == (8, 32) and int(lengths[0]) == 32  # padded to the longest row
    assert int(lengths.min()) >= 1 and int(lengths.min()) < 32  # and shorter rows padded
    # Right padding: each row's tokens come first, then only padding.
    assert torch.equal(mask, (torch.arange(32) < lengths[:, None]).to(mask.dtype))


def test_loaded_bundle_refuses_a_mask_value_other_than_0_and_1_when_the_input_is_a_padding_mask(
    dynamic_bert: PublishedBundle,
) -> None:
    loaded = load_bundle(dynamic_bert.path)
    ids, mask, token_types = make_inputs(loaded.specs, 0, sizes={"batch": 2, "seq": 12})
    with pytest.raises(
        InputValidationError, match=r"input .attention_mask.: value 2 outside the declared range 0\.\.1"
    ):
        loaded(ids, mask * 2, token_types)


def test_pipeline_verifies_a_bool_padding_mask_when_the_model_takes_one(tmp_path: Path) -> None:
    result = run(tmp_path, "model=tiny_bert_dynamic", "backend=export", "model.inputs.1.dtype=bool")
    assert result.bundle is not None and result.verified is not None and result.verified.report.passed
    golden = load_file(str(result.bundle.path / GOLDEN_NAME))
    assert golden["max/input.attention_mask"].dtype == torch.bool
    with load_bundle(result.bundle.path) as loaded:
        ids, mask, token_types = make_inputs(loaded.specs, 5, sizes={"batch": 3, "seq": 10})
        assert mask.dtype == torch.bool
        loaded(ids, mask, token_types)
