"""The server side of KServe v2 over HTTP, for the Ray Serve ingress (Triton has its own).

A request body, JSON or in Triton's binary tensor data extension (a JSON header, then raw
little-endian tensor bytes), becomes numpy inputs or a one-line 400; an answer becomes JSON or
the binary extension, as the request asked. Clients use ``tritonclient`` (pipeline.serve.client).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from pipeline.errors import one_line
from pipeline.serve.serving import Outcome

#: Triton's binary tensor data extension: the JSON header's length, in a request and an answer.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: What decoding a body that is not a well-formed request can raise.
MALFORMED = (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError, MemoryError)
#: The v2 datatypes a bundle's tensors can have (no BYTES, and numpy has no BF16).
DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP answer of the v2 routes: status, body and its headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    @classmethod
    def error(cls, status: int, message: str) -> HttpAnswer:
        """``{"error": message}`` with ``status``: 400 the caller's fault, 500 the server's."""
        return cls(status, json.dumps({"error": message}).encode())


def parse_infer_request(body: bytes, header_length: str | None) -> dict[str, np.ndarray] | HttpAnswer:
    """The inputs of a v2 infer request (binary extension when ``header_length`` is given), or
    the 400 answer saying in one line why it is malformed: never the server's error."""
    try:
        return _decode_request(body, None if header_length is None else int(header_length))
    except MALFORMED as exc:
        return HttpAnswer.error(400, f"malformed v2 request: {one_line(exc)}")


def infer_answer(model: str, outcome: Outcome, binary: bool) -> HttpAnswer:
    """The answer to one request: its outputs (JSON, or binary as asked), or its one-line error
    (400: the caller's inputs, 500: the server's failure)."""
    if outcome.error is not None:
        return HttpAnswer.error(400 if outcome.invalid else 500, outcome.error)
    arrays = {name: np.ascontiguousarray(value) for name, value in outcome.outputs.items()}
    tensors: list[dict[str, Any]] = [
        {"name": name, "shape": list(value.shape), "datatype": np_to_triton_dtype(value.dtype)}
        for name, value in arrays.items()
    ]
    if not binary:
        for tensor, value in zip(tensors, arrays.values(), strict=True):
            tensor["data"] = value.reshape(-1).tolist()
    blobs = [value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes() for value in arrays.values()]
    if binary:
        for tensor, blob in zip(tensors, blobs, strict=True):
            tensor["parameters"] = {"binary_data_size": len(blob)}
    # allow_nan=False: served answers are finite (ServedBundle refuses others); JSON has no NaN.
    head = json.dumps(
        {"model_name": model, "model_version": "1", "outputs": tensors}, allow_nan=False
    ).encode()
    if not binary:
        return HttpAnswer(200, head)
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return HttpAnswer(200, head + b"".join(blobs), headers)


def _decode_request(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    if header_length is not None and not 0 < header_length <= len(body):
        raise ValueError(f"{HEADER_LENGTH} {header_length} outside the body's {len(body)} bytes")
    if not body.strip():
        raise ValueError('empty body; expected a KServe v2 infer request: {"inputs": [...]}')
    offset = len(body) if header_length is None else header_length
    header = json.loads(body[:offset])
    entries = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(
            "expected a JSON object with an 'inputs' list of tensors (name, shape, datatype, data)"
        )
    inputs: dict[str, np.ndarray] = {}
    for entry in entries:
        name, array, offset = _tensor(entry, body, offset)
        if name in inputs:
            raise ValueError(f"input '{name}' is given twice")
        inputs[name] = array
    if header_length is not None and offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes after the last tensor of the binary request")
    return inputs


def _tensor(entry: Mapping[str, Any], body: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    """One input: its name, its array (JSON ``data``, or ``binary_data_size`` bytes of ``body``
    from ``offset``) and the offset after it."""
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    if not isinstance(name, str):
        raise ValueError("a tensor without a name")
    if datatype not in DATATYPES:
        raise ValueError(f"input '{name}': datatype {datatype!r} not supported ({', '.join(DATATYPES)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"input '{name}': shape must be a list of non-negative integers")
    dtype, count = np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<"), int(np.prod(shape))
    parameters = entry.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        try:
            array = np.asarray(entry.get("data"), dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"input '{name}': data is not {datatype} ({exc})") from None
        if array.size != count:
            raise ValueError(f"input '{name}': {array.size} values for shape {shape}")
        return name, array.reshape(shape), offset
    if type(size) is not int or size != count * dtype.itemsize or offset + size > len(body):
        raise ValueError(f"input '{name}': {size} bytes do not hold shape {shape} of {datatype}")
    return name, np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape), offset + size
