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


def test_binary_request_carries_values_when_the_array_is_big_endian() -> None:
    big = np.array([1.0, 2.0], dtype=">f4")
    body, length = encode_binary_request({"x": big})
    np.testing.assert_array_equal(decode_binary_request(body, length)["x"], [1.0, 2.0])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda body, length: (body + b"\0\0\0\0", length), "4 bytes after the last tensor"),
        (lambda body, length: (b'{"inputs": {"a": 1}}', 20), "'inputs' must be a list of tensors"),
        (lambda body, length: (b'{"inputs": [1]}', 15), "'inputs' must be a list of tensors"),
    ],
)
def test_binary_request_is_refused_in_one_line_when_malformed(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    body, length = mangle(*encode_binary_request({"x": np.zeros((2,), np.float32)}))
    with pytest.raises(ValueError, match=message):
        decode_binary_request(body, length)


def test_kept_alive_client_keeps_url_path_and_reconnects_once_when_server_dropped_the_connection() -> None:
    import http.server
    import threading

    from pipeline.serve import ServeClient

    paths: list[str] = []

    class DropsAfterEachAnswer(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            self.close_connection = True  # without saying so: the client finds out on its next request

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DropsAfterEachAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ServeClient(f"http://127.0.0.1:{server.server_address[1]}/models-gateway", keep_alive=True)
        assert client.ready() and client.ready()
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert paths == ["/models-gateway/v2/health/ready"] * 2
