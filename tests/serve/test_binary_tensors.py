"""Triton's binary tensor data extension, both sides: what the client sends is what a server
decodes, and what a server answers is what the client decodes (Ray Serve speaks it too)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.serve.client import (
    decode_binary_answer,
    decode_binary_request,
    encode_binary_answer,
    encode_binary_request,
)


def test_binary_request_decodes_to_the_same_arrays_when_dtypes_differ() -> None:
    inputs = {
        "input_ids": np.arange(12, dtype=np.int32).reshape(2, 6),
        "mask": np.ones((2, 6), dtype=np.bool_),
        "scale": np.linspace(0, 1, 4, dtype=np.float16),
    }
    body, length = encode_binary_request(inputs)
    decoded = decode_binary_request(body, length)
    assert list(decoded) == list(inputs)
    for name, value in inputs.items():
        assert decoded[name].dtype == value.dtype
        np.testing.assert_array_equal(decoded[name], value)


def test_binary_answer_decodes_to_the_same_arrays_when_outputs_are_fp16() -> None:
    outputs = {"last_hidden_state": np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float16)}
    body, length = encode_binary_answer("bert", outputs)
    decoded = decode_binary_answer(body, length)
    np.testing.assert_array_equal(decoded["last_hidden_state"], outputs["last_hidden_state"])


def test_binary_request_is_refused_in_one_line_when_sizes_do_not_match_the_shape() -> None:
    body, length = encode_binary_request({"x": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match=r"input 'x': 24 bytes do not hold shape \[2, 3\] of FP32"):
        decode_binary_request(body[:-4], length)
