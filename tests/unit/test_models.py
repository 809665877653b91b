"""Input generation, the positional adapter and the boundary input check."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline.config import DType, InputSpec, Padding, Precision
from pipeline.errors import InputValidationError
from pipeline.models import flatten_outputs, make_inputs, state_dict_digest
from pipeline.runtime.loaded import InputChecker

SPECS = [
    InputSpec(name="ids", shape=[2, 8], dtype=DType.int32, low=0, high=5),
    InputSpec(
        name="image", shape=[2, 3, 4, 4], dtype=DType.float32, min_shape=[1, 3, 4, 4], max_shape=[4, 3, 4, 4]
    ),
]


def test_make_inputs_repeats_exactly_when_seed_is_the_same() -> None:
    first, second = make_inputs(SPECS, 5), make_inputs(SPECS, 5)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], make_inputs(SPECS, 6)[1])


def test_make_inputs_follow_dtype_shape_and_range_when_generated() -> None:
    ids, image = make_inputs(SPECS, 0)
    assert ids.dtype == torch.int32 and ids.shape == (2, 8) and int(ids.min()) >= 0 and int(ids.max()) < 5
    assert image.dtype == torch.float32 and image.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_make_inputs_pads_each_row_on_the_declared_side_when_an_input_is_a_padding_mask(side: str) -> None:
    spec = InputSpec(name="mask", shape=[6, 10], dtype=DType.int32, padding=Padding(side))
    (mask,) = make_inputs([spec], 3)
    lengths = mask.sum(dim=1)
    assert mask.dtype == torch.int32 and int(lengths[0]) == 10 and int(lengths.min()) >= 1
    assert int(lengths.min()) < 10  # some rows are padded (seeded: always the same rows)
    tokens_first = torch.arange(10) < lengths[:, None]
    expected = tokens_first if side == "right" else tokens_first.flip(-1)
    assert torch.equal(mask.bool(), expected)


def test_make_inputs_draws_true_and_false_when_the_input_is_bool() -> None:
    (flags,) = make_inputs([InputSpec(name="flags", shape=[64], dtype=DType.bool)], 0)
    assert flags.dtype == torch.bool and bool(flags.any()) and not bool(flags.all())


def test_make_inputs_cast_only_floating_inputs_when_precision_is_fp16() -> None:
    ids, image = make_inputs(SPECS, 0, Precision.fp16)
    assert ids.dtype == torch.int32
    assert image.dtype == torch.float16


def test_flatten_outputs_returns_tensors_in_order_when_nested() -> None:
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert flatten_outputs({"x": a, "y": (b, [c])}) == (a, b, c)
    assert flatten_outputs(a) == (a,)


def test_state_dict_digest_changes_when_one_weight_changes() -> None:
    model = torch.nn.Linear(3, 2)
    before = state_dict_digest(model)
    assert state_dict_digest(model) == before
    with torch.no_grad():
        model.weight[0, 0] += 1
    assert state_dict_digest(model) != before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ids, image: (ids.long(), image), "input 'ids': dtype torch.int64, expected torch.int32"),
        (lambda ids, image: (ids, image[:, :, :2]), "input 'image': shape"),
        (
            lambda ids, image: (ids, torch.cat([image, image, image])),
            "input 'image': shape (6, 3, 4, 4) outside",
        ),
        (lambda ids, image: (ids,), "expected 2 inputs (ids, image), got 1"),
        (lambda ids, image: (ids, image.numpy()), "input 'image': expected a tensor"),
    ],
)
def test_input_checker_names_the_input_when_it_does_not_match(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    check = InputChecker(SPECS, Precision.fp32, torch.device("cpu"))
    with pytest.raises(InputValidationError) as caught:
        check(mutate(*make_inputs(SPECS, 0)))
    assert message in str(caught.value)


def test_input_checker_accepts_any_size_within_range_when_dimension_is_dynamic() -> None:
    check = InputChecker(SPECS, Precision.fp32, torch.device("cpu"))
    ids, image = make_inputs(SPECS, 0)
    for batch in (1, 4):
        check((ids, image[:1].expand(batch, -1, -1, -1).contiguous()))


def test_input_checker_rejects_wrong_device_when_model_is_on_cuda() -> None:
    check = InputChecker(SPECS, Precision.fp32, torch.device("cuda"))
    with pytest.raises(InputValidationError, match="input 'ids': on cpu, but the model runs on cuda"):
        check(make_inputs(SPECS, 0))


def test_input_checker_still_rejects_when_python_runs_with_optimizations() -> None:
    code = (
        "import torch; from pipeline.config import DType, InputSpec, Precision; "
        "from pipeline.runtime.loaded import InputChecker; from pipeline.errors import InputValidationError\n"
        "spec = InputSpec(name='x', shape=[2], dtype=DType.float32)\n"
        "c = InputChecker([spec], Precision.fp32, torch.device('cpu'))\n"
        "try:\n    c((torch.zeros(3),))\nexcept InputValidationError as e:\n    print('rejected', e)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert "rejected input 'x'" in out.stdout
