"""Ray Serve on a local Ray instance (127.0.0.1): the same v2 routes and answers as Triton.

Heavy (~20-40 s to start two replicas, ~1.4 GB): marked ``ray``, run by ``make test-serve-ray``
(CI runs it after ``make test``). Request loops are bounded in count and time.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.serve import ServeClient, check_server
from pipeline.serve.client import RequestError
from pipeline.stages.package import PublishedBundle
from tests.serve.helpers import (
    CONNECT_MARGIN_S,
    alive,
    bert_request,
    descendants,
    renamed,
    start_cli,
    wait_for_line,
)

pytestmark = pytest.mark.ray

START_TIMEOUT_S = 240


@dataclass
class RayServer:
    url: str
    process: object
    children: set[int]


@pytest.fixture(scope="module")
def ray_server(dynamic_bert_bundle: PublishedBundle) -> Iterator[RayServer]:
    pytest.importorskip("ray.serve", reason="pip install -e '.[ray]'")
    process = start_cli(str(dynamic_bert_bundle.path), "--ray", "--replicas", "2", "--port", "0")
    try:
        seen = wait_for_line(process, "ready:", START_TIMEOUT_S)
        yield RayServer(seen["url"], process, descendants(process.pid))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except Exception:
                process.kill()


def test_ray_serve_answers_every_golden_set_within_tolerance_when_two_replicas_serve(
    ray_server: RayServer, dynamic_bert_bundle: PublishedBundle
) -> None:
    client = ServeClient(ray_server.url)
    assert client.ready()
    metadata = client.metadata("tiny_bert_dynamic")
    assert [i["name"] for i in metadata["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o["name"] for o in metadata["outputs"]] == ["last_hidden_state", "pooler_output"]
    result = check_server(ray_server.url, dynamic_bert_bundle.path, timeout_s=60)
    assert [s.name for s in result.sets] == ["opt", "max", "min", "odd"]
    assert result.passed, result.summary()


BAD_INPUTS = {
    "unknown name": (
        renamed(bert_request(1, 9), "input_ids", "input_idz"),
        "no input named 'input_idz'",
    ),
    "wrong dtype": (
        {**bert_request(1, 9), "input_ids": np.ones((1, 9), np.int64)},
        "input 'input_ids': dtype torch.int64, expected torch.int32",
    ),
    "wrong rank": (
        {**bert_request(1, 9), "input_ids": np.ones((1, 9, 1), np.int32)},
        "input 'input_ids': shape (1, 9, 1) outside the declared range",
    ),
    "dim out of range": (bert_request(1, 4), "input 'input_ids': shape (1, 4) outside the declared range"),
    "shared dims disagree": (
        bert_request(1, 9, other_seq=8),
        "inputs 'input_ids' and 'token_type_ids' must agree on dimension 'seq': 9 vs 8",
    ),
    "batch over maximum": (bert_request(9, 8), "input 'input_ids': shape (9, 8) outside the declared range"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_ray_serve_answers_400_with_message_when_input_is_bad(ray_server: RayServer, case: str) -> None:
    inputs, message = BAD_INPUTS[case]
    client = ServeClient(ray_server.url, timeout_s=60)
    with pytest.raises(RequestError) as refused:
        client.infer("tiny_bert_dynamic", inputs)
    assert refused.value.status == 400
    assert message in refused.value.message
    assert client.infer("tiny_bert_dynamic", bert_request(2, 8))["pooler_output"].shape == (2, 64)


def test_ray_serve_exits_and_leaves_no_process_when_sigterm_arrives_during_requests(
    ray_server: RayServer,
) -> None:
    client = ServeClient(ray_server.url, timeout_s=60)
    # (start, end, outcome) of every request; each thread stops at 100 requests or 30 s.
    results: list[tuple[float, float, str]] = []
    stop_sending = threading.Event()
    deadline = time.monotonic() + 30

    def caller() -> None:
        for _ in range(100):
            if stop_sending.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                client.infer("tiny_bert_dynamic", bert_request(4, 16))
                outcome = "ok"
            except RequestError as exc:
                outcome = f"HTTP {exc.status}: {exc.message}"
            except OSError as exc:
                outcome = f"connection: {exc}"
            results.append((started, time.monotonic(), outcome))

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop_sending.set()
    process = ray_server.process
    sigterm_at = time.monotonic()
    process.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    process.wait(timeout=60)  # type: ignore[attr-defined]
    for thread in threads:
        thread.join(timeout=60)
    assert process.returncode == 0  # type: ignore[attr-defined]
    assert time.monotonic() - sigterm_at < 30
    # As with Triton: a request the client started just before the signal may reach the proxy
    # only after it and be closed at the door; requests sent earlier were in the server.
    reached = sigterm_at - CONNECT_MARGIN_S
    racing = {outcome for started, _, outcome in results if reached <= started}
    assert {outcome for started, _, outcome in results if started < reached} == {"ok"}, results
    assert all(o == "ok" or o.startswith("connection:") for o in racing), racing
    time.sleep(2)  # Ray's workers leave with their raylet
    assert not [pid for pid in ray_server.children if alive(pid)]
