"""Reading new weights for a refit, and checking them name for name against the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.errors import ConfigError, WeightsMismatchError
from pipeline.models.weights import compare_state_dict, load_weights, read_state_dict


class Encoder(nn.Module):
    base_model_prefix = "encoder"

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)


def weights(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Encoder().state_dict().items()}


def test_read_state_dict_returns_same_tensors_when_saved_in_each_supported_form(tmp_path: Path) -> None:
    expected = weights()
    torch.save(expected, tmp_path / "plain.pt")
    torch.save({"state_dict": expected, "epoch": 3}, tmp_path / "checkpoint.pt")
    save_file(expected, str(tmp_path / "file.safetensors"))
    (tmp_path / "pretrained").mkdir()
    save_file(expected, str(tmp_path / "pretrained" / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"proj.weight": expected["proj.weight"]}, str(sharded / "a.safetensors"))
    save_file({k: v for k, v in expected.items() if k != "proj.weight"}, str(sharded / "b.safetensors"))
    weight_map = {k: "a.safetensors" if k == "proj.weight" else "b.safetensors" for k in expected}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    for source in ("plain.pt", "checkpoint.pt", "file.safetensors", "pretrained", "sharded"):
        loaded = read_state_dict(tmp_path / source)
        assert loaded.keys() == expected.keys(), source
        for name, tensor in expected.items():
            torch.testing.assert_close(loaded[name], tensor)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p, "no such file or directory"),
        (lambda p: (p.mkdir(), p)[1], "a directory without weights; expected one of model.safetensors"),
        (lambda p: (p.write_text("not a checkpoint"), p)[1], "not a readable state-dict file"),
        (lambda p: (torch.save([1, 2], p), p)[1], "expected a mapping of names to tensors"),
    ],
    ids=["missing", "empty-directory", "garbage", "not-a-mapping"],
)
def test_read_state_dict_raises_config_error_naming_the_source_when_unreadable(
    tmp_path: Path, setup: object, message: str
) -> None:
    path = setup(tmp_path / "weights.pt")  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message) as raised:
        read_state_dict(path)
    assert str(path) in str(raised.value)


def test_read_state_dict_refuses_shard_outside_its_directory_when_index_points_there(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"proj.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(ConfigError, match="not a file beside the index"):
        read_state_dict(index)


def test_load_weights_copies_every_value_when_names_and_shapes_match() -> None:
    model, new = Encoder(), weights(seed=5)
    load_weights(model, new, "new.pt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, new[name])


def test_load_weights_strips_base_model_prefix_when_checkpoint_is_from_a_task_model() -> None:
    model, new = Encoder(), weights(seed=5)
    load_weights(model, {f"encoder.{k}": v for k, v in new.items()}, "task.pt")
    torch.testing.assert_close(model.proj.weight, new["proj.weight"])


def test_load_weights_casts_to_model_dtype_when_checkpoint_is_half_precision() -> None:
    model = Encoder()
    load_weights(model, {k: v.half() for k, v in weights().items()}, "half.pt")
    assert model.proj.weight.dtype is torch.float32


def test_load_weights_changes_nothing_and_lists_every_problem_when_weights_do_not_fit() -> None:
    model = Encoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = weights()
    del bad["norm.bias"]
    bad["head.weight"] = torch.zeros(1)
    bad["proj.weight"] = torch.zeros(3, 5)
    with pytest.raises(WeightsMismatchError) as raised:
        load_weights(model, bad, "bad.pt")
    assert str(raised.value) == (
        "weights=bad.pt do not match the bundle's architecture: 1 missing [norm.bias]; "
        "1 unexpected [head.weight]; 1 mis-shaped [proj.weight [3, 5] vs model [3, 4]]"
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_compare_state_dict_shortens_long_lists_when_many_names_differ() -> None:
    many = {f"layer{i}.weight": torch.zeros(1) for i in range(20)}
    description = compare_state_dict(Encoder(), many).describe()
    assert "20 unexpected [layer0.weight" in description
    assert "... 12 more]" in description
