"""A small KServe v2 JSON client (standard library only) and the post-deploy smoke test.

``check_server(url, bundle)`` sends every golden set of the bundle (opt, and min/max/odd for
dynamic models) to a running server (Triton or Ray Serve: the same routes) and compares the
answers with the golden outputs within the bundle's own tolerance; ``python -m pipeline.serve
check URL BUNDLE`` is the same from a shell.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

# KServe v2 datatypes and numpy's names for them.
_NUMPY_TYPES: dict[str, str] = {
    "FP32": "float32",
    "FP16": "float16",
    "FP64": "float64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}
_V2_TYPES = {numpy: v2 for v2, numpy in _NUMPY_TYPES.items()}


class RequestError(PipelineError):
    """A request the server refused (``status`` 400: bad input) or could not answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def encode_tensor(name: str, value: np.ndarray) -> dict[str, Any]:
    """One v2 JSON tensor: name, shape, datatype and row-major data."""
    datatype = _V2_TYPES.get(value.dtype.name)
    if datatype is None:
        raise ValueError(f"input '{name}': dtype {value.dtype} has no KServe v2 datatype")
    return {
        "name": name,
        "shape": list(value.shape),
        "datatype": datatype,
        "data": value.reshape(-1).tolist(),
    }


def decode_tensor(entry: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    """A v2 JSON tensor as (name, array); :class:`ValueError` with one line if malformed."""
    name = entry.get("name")
    if not isinstance(name, str):
        raise ValueError("a tensor without a name")
    datatype, shape, data = entry.get("datatype"), entry.get("shape"), entry.get("data")
    if datatype not in _NUMPY_TYPES:
        raise ValueError(f"input '{name}': datatype {datatype!r} not supported ({', '.join(_NUMPY_TYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"input '{name}': shape must be a list of non-negative integers")
    try:
        array = np.asarray(data, dtype=_NUMPY_TYPES[datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"input '{name}': data is not {datatype} ({exc})") from None
    if array.size != int(np.prod(shape)):
        raise ValueError(f"input '{name}': {array.size} values for shape {shape}")
    return name, array.reshape(shape)


#: Triton's binary tensor data extension: the JSON header's length, in a request and an answer.
HEADER_LENGTH = "Inference-Header-Content-Length"


def encode_binary_request(
    inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None
) -> tuple[bytes, int]:
    """A v2 request in Triton's binary tensor data extension: the JSON header (each input's
    ``binary_data_size``, every output asked for as binary) followed by the inputs' raw bytes;
    returns the body and the header's length."""
    tensors, blobs = _pack_tensors(inputs, "input")
    header: dict[str, Any] = {"inputs": tensors, "parameters": {"binary_data_output": True}}
    if outputs:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    head = json.dumps(header).encode()
    return head + blobs, len(head)


def encode_binary_answer(model: str, outputs: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    """A v2 answer with every output as raw bytes (Triton's binary extension); body and header length."""
    tensors, blobs = _pack_tensors(outputs, "output")
    head = json.dumps({"model_name": model, "model_version": "1", "outputs": tensors}).encode()
    return head + blobs, len(head)


def decode_binary_answer(payload: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """The outputs of a v2 answer, binary (Triton's extension) or JSON."""
    if header_length is None:
        answer = json.loads(payload)
        return dict(decode_tensor(entry) for entry in answer.get("outputs", []))
    answer = json.loads(payload[:header_length])
    return _unpack_tensors(answer.get("outputs", []), payload, header_length, "output")[0]


def decode_binary_request(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    """The inputs of a request in Triton's binary tensor data extension (the server's side);
    :class:`ValueError` with one line if malformed."""
    try:
        header = json.loads(body[:header_length])
        entries = header["inputs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed binary request header ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError("malformed binary request header: 'inputs' must be a list of tensors")
    inputs, end = _unpack_tensors(entries, body, header_length, "input")
    if end != len(body):
        raise ValueError(f"{len(body) - end} bytes after the last tensor of the binary request")
    return inputs


def _pack_tensors(arrays: Mapping[str, np.ndarray], kind: str) -> tuple[list[dict[str, Any]], bytes]:
    """Header entries (``binary_data_size`` each) and the raw little-endian bytes of ``arrays``."""
    tensors, blobs = [], []
    for name, value in arrays.items():
        array = _little_endian(value)
        datatype = _V2_TYPES.get(array.dtype.name)
        if datatype is None:
            raise ValueError(f"{kind} '{name}': dtype {array.dtype} has no KServe v2 datatype")
        blob = array.tobytes()
        blobs.append(blob)
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
    return tensors, b"".join(blobs)


def _unpack_tensors(
    entries: list[dict[str, Any]], payload: bytes, offset: int, kind: str
) -> tuple[dict[str, np.ndarray], int]:
    """The arrays ``entries`` describe, raw bytes read from ``payload`` from ``offset`` on (JSON
    ``data`` where an entry has no ``binary_data_size``); and the offset after the last one."""
    arrays = {}
    for entry in entries:
        name: object
        parameters = entry.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is None:
            name, array = decode_tensor(entry)
        else:
            name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
            if datatype not in _NUMPY_TYPES or not isinstance(shape, list):
                raise ValueError(f"{kind} '{name}': datatype or shape missing or not supported")
            dtype = np.dtype(_NUMPY_TYPES[datatype]).newbyteorder("<")  # the extension is little-endian
            if (
                not isinstance(size, int)
                or size != int(np.prod(shape)) * dtype.itemsize
                or offset + size > len(payload)
            ):
                raise ValueError(f"{kind} '{name}': {size} bytes do not hold shape {shape} of {datatype}")
            count = size // dtype.itemsize
            array = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        arrays[str(name)] = array
    return arrays, offset


def _little_endian(value: np.ndarray) -> np.ndarray:
    """``value`` contiguous and little-endian, as the binary tensor extension carries it."""
    array = np.ascontiguousarray(value)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array


@dataclass
class ServeClient:
    """KServe v2 over HTTP/JSON to one server (``url``: ``http://host:port``).

    ``keep_alive``: each thread keeps one HTTP connection open between requests (what a
    latency-sensitive caller does) instead of connecting per request.
    """

    url: str
    timeout_s: float = 60.0
    keep_alive: bool = False
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def ready(self) -> bool:
        """True when the server reports every model ready (``/v2/health/ready``)."""
        try:
            status, _ = self._request("GET", "/v2/health/ready")
        except (OSError, RequestError):
            return False
        return status == 200

    def metadata(self, model: str) -> dict[str, Any]:
        """The model's v2 metadata: name, versions, platform, inputs and outputs."""
        return self._json("GET", f"/v2/models/{model}")

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; the outputs by name. :class:`RequestError` if refused."""
        body = {"inputs": [encode_tensor(name, value) for name, value in inputs.items()]}
        answer = self._json("POST", f"/v2/models/{model}/infer", body)
        return dict(decode_tensor(entry) for entry in answer.get("outputs", []))

    def infer_binary(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """:meth:`infer` with tensors as raw bytes (Triton's binary tensor data extension; Ray
        Serve speaks JSON only): what a large tensor, e.g. BERT's hidden states, needs."""
        body, header_length = encode_binary_request(inputs, outputs)
        _, payload, headers = self._send(
            "POST",
            f"/v2/models/{model}/infer",
            body,
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)},
        )
        length = headers.get(HEADER_LENGTH.lower())
        return decode_binary_answer(payload, int(length) if length is not None else None)

    def close(self) -> None:
        """Close this thread's kept-alive connection, if any."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        _, payload = self._request(method, path, body)
        result: dict[str, Any] = json.loads(payload)
        return result

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        status, payload, _ = self._send(method, path, data, {"Content-Type": "application/json"})
        return status, payload

    def _send(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        if self.keep_alive:
            return self._send_kept_alive(method, path, data, headers)
        request = urllib.request.Request(
            self.url.rstrip("/") + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return (
                    int(response.status),
                    response.read(),
                    {k.lower(): v for k, v in response.headers.items()},
                )
        except urllib.error.HTTPError as error:
            raise _refusal(error.code, error.read()) from None

    def _send_kept_alive(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        parts = urllib.parse.urlsplit(self.url)
        target = parts.path.rstrip("/") + path
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            reused = connection is not None
            if connection is None:
                kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
                connection = kind(parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout_s)
                self._local.connection = connection
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()  # the next request connects again
                # A kept connection the server closed while idle: send once more on a new one.
                if not (reused and attempt == 1 and isinstance(exc, http.client.RemoteDisconnected)):
                    raise
        if response.status >= 400:
            raise _refusal(response.status, payload)
        return int(response.status), payload, {k.lower(): v for k, v in response.getheaders()}


def _refusal(status: int, raw: bytes) -> RequestError:
    try:
        message = str(json.loads(raw).get("error", raw.decode(errors="replace")))
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace")
    return RequestError(status, message)


@dataclass(frozen=True)
class SetCheck:
    """One golden set sent to the server and compared."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ServerCheck:
    """The smoke test's verdict: every golden set answered within the bundle's tolerance."""

    model: str
    sets: tuple[SetCheck, ...]

    @property
    def passed(self) -> bool:
        """True when every golden set passed."""
        return bool(self.sets) and all(s.passed for s in self.sets)

    def summary(self) -> str:
        """One line per set, then the verdict."""
        lines = [f"{'PASS' if s.passed else 'FAIL'} {s.name}: {s.detail}" for s in self.sets]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: {sum(s.passed for s in self.sets)}/{len(self.sets)} golden sets of {self.model}"
        )
        return "\n".join(lines)


def golden_requests(
    bundle: str | Path,
) -> tuple[str, dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], Any]:
    """The bundle's model name, its golden sets as (inputs by name, outputs by name) in numpy,
    and its tolerance; the bundle is checked (sha256, signature) first."""
    from safetensors.numpy import load_file

    from pipeline.runtime import open_bundle
    from pipeline.runtime.archive import release_unpacked
    from pipeline.runtime.format import GOLDEN_NAME, golden_sets
    from pipeline.runtime.types import Tolerance
    from pipeline.serve.triton_config import output_name

    opened = open_bundle(bundle)
    root, manifest = opened.root, opened.manifest
    try:
        tensors = load_file(str(root / GOLDEN_NAME))
    finally:
        release_unpacked(root)
    input_names = [spec["name"] for spec in manifest.inputs]
    names = [output_name(entry, i) for i, entry in enumerate(manifest.outputs)]
    sets = golden_sets(tensors, input_names, len(names))
    requests = {
        set_name: (
            dict(zip(input_names, inputs, strict=True)),
            dict(zip(names, outputs, strict=True)),
        )
        for set_name, (inputs, outputs) in sets.items()
    }
    return manifest.model_name, requests, Tolerance(**manifest.verification["tolerance"])


def check_server(
    url: str, bundle: str | Path, model: str | None = None, timeout_s: float = 60.0
) -> ServerCheck:
    """Send each golden set of ``bundle`` to the server at ``url`` and compare the answers with
    the golden outputs within the bundle's tolerance (the operator's post-deploy smoke test)."""
    import torch

    from pipeline.runtime.verification import compare

    model_name, requests, tolerance = golden_requests(bundle)
    model = model or model_name
    client = ServeClient(url, timeout_s=timeout_s)
    checks = []
    for set_name, (inputs, expected) in requests.items():
        try:
            # Binary tensors: Triton answers FP16 outputs only that way, and it is exact.
            answer = client.infer_binary(model, inputs)
        except (RequestError, OSError) as exc:
            checks.append(SetCheck(set_name, False, str(exc)))
            continue
        missing = [name for name in expected if name not in answer]
        if missing:
            checks.append(SetCheck(set_name, False, f"outputs missing from the answer: {missing}"))
            continue
        try:
            comparisons = compare(
                set_name,
                [torch.from_numpy(np.array(answer[name])) for name in expected],
                [torch.from_numpy(np.array(value)) for value in expected.values()],
                tolerance,
            )
        except ValueError as exc:  # another number of values than the golden output
            checks.append(SetCheck(set_name, False, str(exc)))
            continue
        worst = max(comparisons, key=lambda c: c.max_abs_error / max(c.allowed_abs_error, 1e-30))
        shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in inputs.items())
        checks.append(
            SetCheck(
                set_name,
                all(c.passed for c in comparisons),
                f"{shapes}; worst max_abs={worst.max_abs_error:.3g} (allowed {worst.allowed_abs_error:.3g})",
            )
        )
    return ServerCheck(model, tuple(checks))
