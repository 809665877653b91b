"""Declared inputs reach forward's parameters by name, or by position only when asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config.schema import InputBinding
from pipeline.errors import ConfigError
from pipeline.stages.build import build_model, check_input_binding
from tests.helpers import config_for


class TwoInputs(nn.Module):
    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return input_ids if token_type_ids is None else input_ids + token_type_ids


class VarArgs(nn.Module):
    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.stack(tensors).sum(0)


class KeywordOnly(nn.Module):
    def forward(self, *, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return image * mask


class TupleInput(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pair[0] + pair[1]


def test_check_input_binding_names_input_parameters_and_hint_when_name_is_misspelled() -> None:
    with pytest.raises(ConfigError) as caught:
        check_input_binding(TwoInputs(), ["input_ids", "token_type_id"], InputBinding.keyword)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("model.inputs[token_type_id]: not a parameter of TwoInputs.forward(")
    assert "input_ids, token_type_ids=..." in message
    assert "did you mean 'token_type_ids'?" in message


def test_build_model_refuses_tiny_bert_when_an_input_name_is_misspelled(tmp_path: Path) -> None:
    # The case: before, this built a model that fed token_type_ids into attention_mask.
    config = config_for(tmp_path, "model=tiny_bert", "model.inputs.1.name=token_type_id")
    with pytest.raises(ConfigError, match=r"token_type_id\].*did you mean 'token_type_ids'"):
        build_model(config, torch.device("cpu"))


def test_check_input_binding_asks_for_positional_when_forward_takes_only_varargs() -> None:
    with pytest.raises(ConfigError, match=r"by position only; set model.bind_inputs=positional"):
        check_input_binding(VarArgs(), ["a", "b"], InputBinding.keyword)
    check_input_binding(VarArgs(), ["a", "b"], InputBinding.positional)


def test_build_model_passes_inputs_by_position_when_binding_is_positional(tmp_path: Path) -> None:
    config = config_for(
        tmp_path, "model=tiny_cnn", "model.inputs.0.name=anything", "model.bind_inputs=positional"
    )
    built = build_model(config, torch.device("cpu"))
    assert built.eager(*built.golden_inputs)[0].shape == (2, 10)


def test_check_input_binding_names_required_parameter_when_keyword_only_name_is_not_declared() -> None:
    with pytest.raises(ConfigError) as caught:
        check_input_binding(KeywordOnly(), ["image", "masks"], InputBinding.keyword)
    assert "model.inputs[masks]" in str(caught.value) and "did you mean 'mask'?" in str(caught.value)
    with pytest.raises(ConfigError, match=r"requires mask, which model.inputs does not declare"):
        check_input_binding(KeywordOnly(), ["image"], InputBinding.keyword)


def test_check_input_binding_explains_one_tensor_per_parameter_when_forward_takes_a_tuple() -> None:
    with pytest.raises(ConfigError, match=r"2 inputs declared for 1 parameters: each input is one tensor"):
        check_input_binding(TupleInput(), ["first", "second"], InputBinding.keyword)
    with pytest.raises(ConfigError, match=r"takes 1 positional inputs, but model.inputs declares 2"):
        check_input_binding(TupleInput(), ["first", "second"], InputBinding.positional)
