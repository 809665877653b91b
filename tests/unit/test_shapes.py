"""Named dynamic dimensions: config resolution, shared export dims, golden shapes, the input check."""

from __future__ import annotations

import pytest
import torch

from pipeline.backends.exported import dynamic_shapes
from pipeline.config import DType, InputSpec, Precision, compose, resolve, validate
from pipeline.config.schema import DimRange
from pipeline.errors import ConfigError, InputValidationError
from pipeline.models import make_inputs
from pipeline.models.adapter import output_names
from pipeline.models.shapes import dynamic_dims, shape_sets, trace_sizes
from pipeline.runtime.loaded import InputChecker, ModelOutputs


def bert_specs() -> list[InputSpec]:
    return resolve(compose(["model=tiny_bert_dynamic"])).model.inputs


def test_validate_fills_shape_bounds_from_named_dims_when_inputs_share_them() -> None:
    config = resolve(compose(["model=tiny_bert_dynamic"]))
    for spec in config.model.inputs:
        assert spec.dims == ["batch", "seq"]
        assert (spec.min_shape, spec.shape, spec.max_shape) == ([1, 8], [1, 16], [8, 32])
    assert config.model.dims["batch"].opt == 1 and config.model.dims["seq"].opt == 16


def test_validate_leaves_resolved_inputs_unchanged_when_run_again() -> None:
    config = resolve(compose(["model=tiny_bert_dynamic"]))
    before = [(s.min_shape, s.shape, s.max_shape) for s in config.model.inputs]
    validate(config)
    assert [(s.min_shape, s.shape, s.max_shape) for s in config.model.inputs] == before


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model.inputs.1.dims=[batch,length]"],
            "dimension 'length' is not in model.dims (declared: batch, seq)",
        ),
        (
            ["model.inputs.0.shape=[2,16]"],
            "attention_mask].shape[0] is 1, but model.inputs[input_ids] gives dimension 'batch' size 2",
        ),
        (["model.dims.batch.opt=4"], "shape[0] is 1, but dimension 'batch' has opt 4"),
        (["model.dims.seq.max=8"], "need 1 <= min < max"),
        (["model.inputs.0.dims=[batch]"], "dims must name each of the 2 dimensions"),
        (["model.inputs.0.max_shape=[8,64]"], "max_shape[1] is 64 but dimension 'seq' ranges 8..32"),
    ],
)
def test_validate_rejects_named_dims_in_one_line_when_inconsistent(
    overrides: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(compose(["model=tiny_bert_dynamic", *overrides]))
    assert expected in str(caught.value)


def test_validate_rejects_declared_dimension_when_no_input_names_it() -> None:
    config = resolve(compose(["model=tiny_bert_dynamic"]))
    config.model.dims["extra"] = DimRange(min=1, max=4)
    with pytest.raises(ConfigError, match=r"\['extra'\] declared but no input names them"):
        validate(config)


def test_dynamic_shapes_give_one_export_dim_per_name_when_inputs_share_it() -> None:
    (shapes,) = dynamic_shapes(bert_specs()) or ((),)
    ids, mask, token_types = shapes
    assert ids[0] is token_types[0] is mask[0] and ids[1] is token_types[1] is mask[1]
    assert ids[0].__name__ == "batch" and (ids[0].min, ids[0].max) == (1, 8)


def test_dynamic_shapes_name_each_dimension_apart_when_inputs_give_no_names() -> None:
    specs = [InputSpec(name="x", shape=[2, 4], min_shape=[1, 4], max_shape=[4, 4])]
    (shapes,) = dynamic_shapes(specs) or ((),)
    assert list(shapes[0]) == [0] and shapes[0][0].__name__ == "x_dim0"
    assert dynamic_shapes([InputSpec(name="x", shape=[2, 4])]) is None


def test_shape_sets_cover_min_max_and_an_inner_size_when_dims_are_dynamic() -> None:
    sets = shape_sets(bert_specs())
    assert sets["min"] == {"batch": 1, "seq": 8} and sets["max"] == {"batch": 8, "seq": 32}
    odd = sets["odd"]
    assert 1 < odd["batch"] < 8 and 8 < odd["seq"] < 32 and odd["seq"] != 16
    ids, mask, token_types = make_inputs(bert_specs(), 0, sizes=odd)
    assert ids.shape == mask.shape == token_types.shape == (odd["batch"], odd["seq"])


def test_shape_sets_are_empty_when_model_has_no_dynamic_dimension() -> None:
    assert shape_sets([InputSpec(name="x", shape=[1, 3], dtype=DType.float32)]) == {}


def test_trace_sizes_raise_a_size_one_dimension_to_two_when_it_is_dynamic() -> None:
    assert trace_sizes(bert_specs()) == {"batch": 2, "seq": 16}
    assert dynamic_dims(bert_specs())["batch"].opt == 1


def test_input_checker_names_both_inputs_when_a_shared_dimension_differs() -> None:
    specs = bert_specs()
    check = InputChecker(specs, Precision.fp32, torch.device("cpu"))
    ids, mask, token_types = make_inputs(specs, 0, sizes={"batch": 3, "seq": 20})
    check((ids, mask, token_types))
    with pytest.raises(InputValidationError) as caught:
        check((ids, mask, token_types[:2]))
    assert (
        str(caught.value) == "inputs 'input_ids' and 'token_type_ids' must agree on dimension 'batch': 3 vs 2"
    )


def test_output_names_follow_keys_in_flatten_order_when_model_returns_mappings() -> None:
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert output_names({"logits": a, "extra": (b, {"deep": c})}) == ["logits", "extra.0", "extra.1.deep"]
    assert output_names((a, b)) == [None, None]
    assert output_names(a) == [None]


def test_model_outputs_answer_to_names_and_indices_when_outputs_are_named() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    outputs = ModelOutputs((a, b), ["logits", "features"])
    assert outputs[0] is a and outputs["features"] is b and tuple(outputs) == (a, b)
    assert outputs.keys() == ["logits", "features"] and outputs.to_dict() == {"logits": a, "features": b}
    with pytest.raises(KeyError, match="outputs: \\['logits', 'features'\\]"):
        outputs["scores"]
    assert ModelOutputs((a,)).keys() == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.inputs.0.max_value=500",
            r"values are drawn from \[low, high\) = \[0, 1000\), above max_value 500",
        ),
        ("model.inputs.0.min_value=5", "low 0 is below min_value 5"),
    ],
)
def test_validate_refuses_value_range_when_random_draws_fall_outside_it(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(compose(["model=tiny_bert", override]))
