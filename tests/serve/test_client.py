"""ServeClient over tritonclient, against a stand-in HTTP server: what reaches the wire."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest

from pipeline.serve import RequestError, ServeClient
from tests.helpers import subprocess_env


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers ready and model loads, refuses every infer request with a v2 error; records the paths.
    ``drop``: closes the connection of the next request without answering it, as a server does
    that closes a kept-alive connection just as a request arrives on it."""

    protocol_version = "HTTP/1.1"
    paths: ClassVar[list[str]] = []
    drop = False

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self._answer(200, b"{}")

    def do_POST(self) -> None:
        self.paths.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if Recorder.drop:
            Recorder.drop, self.close_connection = False, True
            return
        if self.path.endswith("/load"):
            self._answer(200, b"{}")
            return
        self._answer(400, json.dumps({"error": "input 'x': expected 2 dims, got 1"}).encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.paths, Recorder.drop = [], False
    running = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{running.server_address[1]}"
    running.shutdown()
    running.server_close()


def test_serve_client_keeps_the_url_path_when_server_sits_behind_a_gateway_prefix(server: str) -> None:
    client = ServeClient(f"{server}/models-gateway")
    assert client.ready() and client.ready()
    assert Recorder.paths == ["/models-gateway/v2/health/ready"] * 2


def test_serve_client_sends_again_on_a_new_connection_when_server_closed_the_kept_one(server: str) -> None:
    # POST: tritonclient's HTTP library sends a GET again itself, but not a POST.
    client = ServeClient(server)
    client.load_model("m")
    Recorder.drop = True
    client.load_model("m")
    assert Recorder.paths == ["/v2/repository/models/m/load"] * 3


def test_serve_client_raises_request_error_with_status_and_message_when_server_refuses(server: str) -> None:
    with pytest.raises(RequestError) as refused:
        ServeClient(server).infer("m", {"x": np.zeros((3,), np.float32)}, binary=True, outputs=["y"])
    assert (refused.value.status, refused.value.message) == (400, "input 'x': expected 2 dims, got 1")
    assert Recorder.paths == ["/v2/models/m/infer"]


def test_serve_client_is_not_ready_when_nothing_listens() -> None:
    assert not ServeClient("http://127.0.0.1:1", timeout_s=2).ready()


UNANSWERED_LOAD = """
import socket, sys
from pipeline.serve import ServeClient
from pipeline.signals import clean_stop

silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (backlog), answers nothing
with clean_stop("stopped"):
    client = ServeClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=120)
    print("waiting", flush=True)
    client.load_model("bert")  # what tune's model loads look like while the server works
"""


def test_serve_client_stops_in_one_line_when_sigterm_arrives_while_a_request_waits() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", UNANSWERED_LOAD],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "waiting\n"
    time.sleep(1)  # the request is sent and waits for the answer in gevent's event loop
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert err.strip().splitlines() == ["interrupted (SIGTERM); stopped"], err
