"""Models as users bring them: library constructors and user modules as ``_target_``, no wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from pipeline.config.schema import InputSpec, ModelConfig, WeightsConfig, WeightsSource
from pipeline.errors import ConfigError, WeightsMismatchError
from pipeline.models import state_dict_digest
from pipeline.stages.build import instantiate_model
from tests.helpers import cli

SMALL_CNN = {"_target_": "pipeline.models.zoo.small_cnn", "channels": 8}
MOBILENET = {"_target_": "torchvision.models.mobilenet_v3_small", "num_classes": 10}
AUTO_BERT = {
    "_target_": "transformers.AutoModel.from_config",
    "config": {
        "_target_": "transformers.BertConfig",
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": 100,
    },
}
USER_MODULE = '''
import torch
from torch import nn


class TinyMLP(nn.Module):
    """A user's model: a plain nn.Module class, no weights argument."""

    def __init__(self, features: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.layers(values)
'''


def model_config(architecture: dict[str, Any], **weights: Any) -> ModelConfig:
    return ModelConfig(
        name="library",
        architecture=architecture,
        weights=WeightsConfig(**weights),
        inputs=[InputSpec(name="images", shape=[1, 3, 64, 64])],
    )


def test_instantiate_model_calls_torchvision_constructor_seeded_without_weights_when_it_takes_its_own() -> (
    None
):
    first = instantiate_model(model_config(MOBILENET, seed=0))
    again = instantiate_model(model_config(MOBILENET, seed=0))
    other = instantiate_model(model_config(MOBILENET, seed=1))
    assert isinstance(first, torchvision.models.MobileNetV3) and not first.training
    assert state_dict_digest(first) == state_dict_digest(again) != state_dict_digest(other)


def test_instantiate_model_loads_pretrained_file_strictly_when_constructor_cannot(tmp_path: Path) -> None:
    torch.manual_seed(7)
    reference = torchvision.models.mobilenet_v3_small(num_classes=10)
    path = tmp_path / "mobilenet.safetensors"
    save_file(reference.state_dict(), str(path))
    built = instantiate_model(
        model_config(MOBILENET, source=WeightsSource.pretrained, name_or_path=str(path))
    )
    assert state_dict_digest(built) == state_dict_digest(reference)


def test_instantiate_model_lists_mismatched_names_when_pretrained_file_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "five-classes.pt"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=5).state_dict(), path)
    config = model_config(MOBILENET, source=WeightsSource.pretrained, name_or_path=str(path))
    with pytest.raises(
        WeightsMismatchError, match=r"classifier\.3\.weight \[5, 1024\] vs model \[10, 1024\]"
    ):
        instantiate_model(config)


def test_instantiate_model_asks_for_a_path_when_pretrained_constructor_has_none() -> None:
    with pytest.raises(ConfigError, match=r"model\.weights\.name_or_path"):
        instantiate_model(model_config(MOBILENET, source=WeightsSource.pretrained))


def test_instantiate_model_builds_transformers_model_from_config_class_when_nested_target() -> None:
    model = instantiate_model(model_config(AUTO_BERT, seed=3))
    again = instantiate_model(model_config(AUTO_BERT, seed=3))
    assert type(model).__name__ == "BertModel" and model.config.num_hidden_layers == 1
    assert state_dict_digest(model) == state_dict_digest(again)


def write_config_dir(root: Path) -> Path:
    conf = root / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mobilenet.yaml").write_text(
        "name: mobilenet\n"
        "architecture: {_target_: torchvision.models.mobilenet_v3_small, num_classes: 10}\n"
        "inputs:\n  - {name: x, shape: [1, 3, 64, 64], dtype: float32, low: 0.0, high: 1.0}\n"
    )
    (conf / "tiny_mlp.yaml").write_text(
        "name: tiny_mlp\n"
        "architecture: {_target_: mymodels.TinyMLP, hidden: 32}\n"
        "inputs:\n  - {name: values, shape: [4, 8], dtype: float32, low: -1.0, high: 1.0}\n"
    )
    (root / "mymodels.py").write_text(USER_MODULE)
    return root / "conf"


@pytest.mark.parametrize("model", ["mobilenet", "tiny_mlp"])
def test_cli_publishes_verified_bundle_when_model_yaml_comes_from_config_dir(
    tmp_path: Path, model: str
) -> None:
    config_dir = write_config_dir(tmp_path)
    completed = cli(
        "pipeline",
        "--config-dir",
        str(config_dir),
        f"model={model}",
        f"artifacts_dir={tmp_path / 'artifacts'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        pythonpath=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    bundle = Path(completed.stdout.strip().splitlines()[-1].removeprefix("bundle: "))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model_name"] == model and manifest["verification"]["passed"]
    assert manifest["overrides"][0] == f"--config-dir={config_dir}"  # the report's rebuild needs it


def test_instantiate_model_names_module_not_found_and_pythonpath_when_target_module_is_missing() -> None:
    with pytest.raises(ConfigError) as caught:
        instantiate_model(model_config({"_target_": "mymodels_not_on_path.TinyMLP"}))
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot import 'mymodels_not_on_path.TinyMLP'" in message
    assert "ModuleNotFoundError" in message and "PYTHONPATH" in message


def test_instantiate_model_lists_mismatched_names_when_zoo_model_weights_do_not_fit(tmp_path: Path) -> None:
    # A zoo factory loads pretrained weights the same strict way as a user model: exit 2, names.
    path = tmp_path / "other.pt"
    torch.save(instantiate_model(model_config(SMALL_CNN | {"channels": 4})).state_dict(), path)
    config = model_config(SMALL_CNN, source=WeightsSource.pretrained, name_or_path=str(path))
    with pytest.raises(WeightsMismatchError, match=r"9 mis-shaped \[features.0.bias \[4\] vs model \[8\]"):
        instantiate_model(config)
