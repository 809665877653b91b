"""Triton's binary tensor data extension on the Ray Serve ingress, against Triton's own client
library: what ``tritonclient`` sends decodes to the same arrays, and what the ingress answers
``tritonclient`` decodes to the same arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import np_to_triton_dtype

from pipeline.serve.serving import Outcome
from pipeline.serve.v2_http import HEADER_LENGTH, HttpAnswer, infer_answer, parse_infer_request


def tritonclient_body(inputs: dict[str, np.ndarray], binary: bool = True) -> tuple[bytes, int | None]:
    """The request body tritonclient sends for ``inputs``, and its binary header's length."""
    tensors = []
    for name, value in inputs.items():
        tensor = triton_http.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value, binary_data=binary)
        tensors.append(tensor)
    body, header_length = triton_http.InferenceServerClient.generate_request_body(tensors)
    return body, header_length


def parsed(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    result = parse_infer_request(body, None if header_length is None else str(header_length))
    assert not isinstance(result, HttpAnswer), result.body
    return result


@pytest.mark.parametrize("binary", [True, False])
def test_parse_infer_request_gives_the_arrays_tritonclient_sent_when_dtypes_differ(binary: bool) -> None:
    inputs = {
        "input_ids": np.arange(12, dtype=np.int32).reshape(2, 6),
        "mask": np.ones((2, 6), dtype=np.bool_),
        "scale": np.linspace(0, 1, 4, dtype=np.float32),
    }
    decoded = parsed(*tritonclient_body(inputs, binary))
    assert list(decoded) == list(inputs)
    for name, value in inputs.items():
        assert decoded[name].dtype == value.dtype
        np.testing.assert_array_equal(decoded[name], value)


@pytest.mark.parametrize("binary", [True, False])
def test_infer_answer_decodes_in_tritonclient_to_the_same_arrays_when_outputs_are_fp16_or_int(
    binary: bool,
) -> None:
    outputs = {
        "last_hidden_state": np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float16),
        "labels": np.array([[3, 1]], dtype=np.int64),
    }
    answer = infer_answer("bert", Outcome(outputs=outputs), binary=binary)
    assert answer.status == 200
    length = answer.headers.get(HEADER_LENGTH)
    result = triton_http.InferenceServerClient.parse_response_body(
        answer.body, header_length=None if length is None else int(length)
    )
    for name, value in outputs.items():
        np.testing.assert_array_equal(result.as_numpy(name), value)
        assert result.as_numpy(name).dtype == value.dtype


def test_parse_infer_request_refuses_in_one_line_when_sizes_do_not_match_the_shape() -> None:
    body, length = tritonclient_body({"x": np.zeros((2, 3), np.float32)})
    answer = parse_infer_request(body[:-4], str(length))
    assert isinstance(answer, HttpAnswer) and answer.status == 400
    assert b"input 'x': 24 bytes do not hold shape [2, 3] of FP32" in answer.body


Mangle = Callable[[bytes, int], tuple[bytes, int]]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda body, length: (body + b"\0\0\0\0", length), "4 bytes after the last tensor"),
        (lambda body, length: (b'{"inputs": {"a": 1}}', 20), "'inputs' list of tensors"),
        (lambda body, length: (b'{"inputs": [1]}', 15), "'inputs' list of tensors"),
        (lambda body, length: (body, len(body) + 1), "outside the body's"),
    ],
)
def test_parse_infer_request_refuses_in_one_line_when_binary_body_is_malformed(
    mangle: Mangle, message: str
) -> None:
    body, length = tritonclient_body({"x": np.zeros((2,), np.float32)})
    assert length is not None
    answer = parse_infer_request(*(lambda b, n: (b, str(n)))(*mangle(body, length)))
    assert isinstance(answer, HttpAnswer) and answer.status == 400
    assert message in answer.body.decode() and "\n" not in answer.body.decode()
