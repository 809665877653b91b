"""A real tritonserver on 127.0.0.1 (ephemeral ports) serving tiny bundles over KServe v2 HTTP.

Every request loop here is bounded in count and in time, and every server is stopped by its
test; nothing is sent anywhere but the loopback.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.runtime import load_bundle
from pipeline.runtime.format import read_manifest
from pipeline.serve import ServeClient, check_server, export_triton
from pipeline.serve.client import RequestError
from pipeline.serve.server import TritonInstall, TritonServer
from pipeline.stages.package import PublishedBundle
from tests.helpers import cli, flip_byte
from tests.serve.helpers import (
    CONNECT_MARGIN_S,
    alive,
    bert_request,
    descendants,
    processes_mentioning,
    renamed,
    start_cli,
    wait_for_line,
)

pytestmark = pytest.mark.usefixtures("triton_installed")


def test_triton_install_finds_the_wheels_libraries_when_pytriton_is_installed_outside_site_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pip install --target (the GPU host's layout) or a directory on PYTHONPATH: pytriton's own
    # helper then takes the install for a source checkout and names a directory the wheel lacks.
    import site

    monkeypatch.setattr(site, "getsitepackages", lambda: [])
    monkeypatch.setattr(site, "getusersitepackages", lambda: "/nowhere")
    libraries = TritonInstall.find().libraries
    assert libraries.is_dir() and any(libraries.glob("libcudart*")), libraries


START_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def server(
    cnn_bundle: PublishedBundle,
    dynamic_bert_bundle: PublishedBundle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonServer]:
    """One server with both tiny models."""
    workdir = tmp_path_factory.mktemp("triton")
    export_triton(cnn_bundle.path, workdir / "models")
    export_triton(dynamic_bert_bundle.path, workdir / "models")
    log = (workdir / "tritonserver.log").open("w")
    running = TritonServer(workdir / "models", port=0, metrics_port=0, workdir=workdir, log=log)
    running.start(timeout_s=START_TIMEOUT_S)
    yield running
    running.stop()
    log.close()


@pytest.mark.parametrize("bundle_fixture", ["cnn_bundle", "dynamic_bert_bundle"])
def test_triton_server_metadata_matches_manifest_when_ready(
    server: TritonServer, bundle_fixture: str, request: pytest.FixtureRequest
) -> None:
    manifest = read_manifest(request.getfixturevalue(bundle_fixture).path)
    client = ServeClient(server.url)
    assert client.ready()
    metadata = client.metadata(manifest.model_name)
    assert metadata["name"] == manifest.model_name
    assert [(i["name"], i["datatype"], len(i["shape"])) for i in metadata["inputs"]] == [
        (spec["name"], spec["dtype"].replace("float32", "FP32").replace("int32", "INT32"), len(spec["shape"]))
        for spec in manifest.inputs
    ]
    names = [o["name"] or f"output_{o['index']}" for o in manifest.outputs]
    assert [o["name"] for o in metadata["outputs"]] == names
    # Batch and named dynamic dims are -1, the rest as recorded.
    assert [o["shape"][-1] for o in metadata["outputs"]] == [o["shape"][-1] for o in manifest.outputs]


@pytest.mark.parametrize("bundle_fixture", ["cnn_bundle", "dynamic_bert_bundle"])
def test_triton_server_answers_every_golden_set_within_tolerance_when_served(
    server: TritonServer, bundle_fixture: str, request: pytest.FixtureRequest
) -> None:
    result = check_server(server.url, request.getfixturevalue(bundle_fixture).path, timeout_s=30)
    assert [s.name for s in result.sets] == ["opt", "max", "min", "odd"]
    assert result.passed, result.summary()


@pytest.mark.parametrize("bundle_fixture", ["cnn_bundle", "dynamic_bert_bundle"])
def test_serve_client_binary_answers_equal_json_answers_when_connection_is_kept_alive(
    server: TritonServer, bundle_fixture: str, request: pytest.FixtureRequest
) -> None:
    from pipeline.serve.client import golden_requests

    model, sets, _ = golden_requests(request.getfixturevalue(bundle_fixture).path)
    json_client, binary_client = ServeClient(server.url), ServeClient(server.url)
    try:
        for inputs, expected in sets.values():
            by_json = json_client.infer(model, inputs)
            for _ in range(2):  # the second request reuses the connection
                by_binary = binary_client.infer(model, inputs, binary=True)
                assert list(by_binary) == list(expected)
                for name in expected:
                    assert by_binary[name].dtype == by_json[name].dtype
                    np.testing.assert_array_equal(by_binary[name], by_json[name])
        with pytest.raises(RequestError) as refused:  # a refusal keeps its message in binary too
            binary_client.infer(model, {"nothing": np.zeros((1,), np.float32)}, binary=True)
        assert refused.value.status == 400
    finally:
        binary_client.close()


BAD_INPUTS = {
    "unknown name": (
        renamed(bert_request(1, 9), "input_ids", "input_idz"),
        "unexpected inference input 'input_idz'",
    ),
    "wrong dtype": (
        {**bert_request(1, 9), "input_ids": np.ones((1, 9), np.int64)},
        "inference input 'input_ids' data-type is 'INT64', but model 'tiny_bert_dynamic' expects 'INT32'",
    ),
    "wrong rank": (
        {**bert_request(1, 9), "input_ids": np.ones((1, 9, 1), np.int32)},
        "unexpected shape for input 'input_ids' for model 'tiny_bert_dynamic'",
    ),
    "dim out of range": (bert_request(1, 4), "input 'input_ids': shape (1, 4) outside the declared range"),
    "shared dims disagree": (
        bert_request(1, 9, other_seq=8),
        "inputs 'input_ids' and 'token_type_ids' must agree on dimension 'seq': 9 vs 8",
    ),
    "batch over maximum": (bert_request(9, 8), "batch-size must be <= 8"),
    "token id out of range": (
        {**bert_request(1, 9), "input_ids": np.full((1, 9), 1000, np.int32)},
        "input 'input_ids': value 1000 outside the declared range 0..999",
    ),
    "mask value out of range": (
        {**bert_request(1, 9), "attention_mask": np.full((1, 9), 2, np.int32)},
        "input 'attention_mask': value 2 outside the declared range 0..1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_triton_server_answers_400_with_message_when_input_is_bad(server: TritonServer, case: str) -> None:
    inputs, message = BAD_INPUTS[case]
    client = ServeClient(server.url, timeout_s=30)
    with pytest.raises(RequestError) as refused:
        client.infer("tiny_bert_dynamic", inputs)
    assert refused.value.status == 400
    assert message in refused.value.message
    assert "Traceback" not in refused.value.message
    # The model still answers good requests afterwards.
    assert client.infer("tiny_bert_dynamic", bert_request(2, 8))["pooler_output"].shape == (2, 64)


def test_triton_server_gives_each_caller_its_own_answer_when_16_threads_send_64_requests(
    server: TritonServer, cnn_bundle: PublishedBundle
) -> None:
    rng = np.random.default_rng(7)
    # Distinct inputs whose outputs differ far beyond the tolerance: each scaled differently.
    images = [(rng.random((1, 3, 32, 32)) * (1 + i)).astype(np.float32) for i in range(64)]
    with load_bundle(cnn_bundle.path) as reference:
        expected = [reference(torch.from_numpy(x))[0].numpy() for x in images]
    executions = server.metric("nv_inference_exec_count", "tiny_cnn")
    successes = server.metric("nv_inference_request_success", "tiny_cnn")
    answers: dict[int, np.ndarray] = {}
    errors: list[str] = []
    client = ServeClient(server.url, timeout_s=60)
    deadline = time.monotonic() + 120

    def caller(first: int) -> None:
        for index in range(first, 64, 16):  # 4 requests per thread, 64 in all
            if time.monotonic() > deadline:
                errors.append(f"request {index}: not sent, out of time")
                return
            try:
                answers[index] = client.infer("tiny_cnn", {"images": images[index]})["output_0"]
            except (RequestError, OSError) as exc:
                errors.append(f"request {index}: {exc}")

    threads = [threading.Thread(target=caller, args=(first,)) for first in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not errors
    assert sorted(answers) == list(range(64))
    for index, answer in answers.items():
        distances = [float(np.abs(answer - other).max()) for other in expected]
        assert int(np.argmin(distances)) == index
        np.testing.assert_allclose(answer, expected[index], atol=1e-3, rtol=1e-2)
    # Triton counts a request after its answer is sent: the last ones may show a moment later.
    counted = time.monotonic() + 10
    while (
        server.metric("nv_inference_request_success", "tiny_cnn") - successes < 64
        and time.monotonic() < counted
    ):
        time.sleep(0.1)
    requests_done = server.metric("nv_inference_request_success", "tiny_cnn") - successes
    executions_done = server.metric("nv_inference_exec_count", "tiny_cnn") - executions
    assert requests_done == 64
    assert executions_done < requests_done  # the dynamic batcher stacked requests


def test_triton_server_answers_each_request_with_the_outputs_it_asked_for_when_batched_with_others(
    server: TritonServer, dynamic_bert_bundle: PublishedBundle
) -> None:
    # The backend copies to the host only the outputs a batch's requests asked for.
    asks: list[list[str] | None] = [["pooler_output"], ["last_hidden_state"], None]
    requests = [bert_request(1 + index % 3, 8 + index % 5) for index in range(24)]
    names = ["last_hidden_state", "pooler_output"]
    with load_bundle(dynamic_bert_bundle.path) as reference:
        answered = [reference(**{k: torch.from_numpy(v) for k, v in r.items()}) for r in requests]
        expected = [{name: outputs[name].numpy() for name in names} for outputs in answered]
    client = ServeClient(server.url, timeout_s=60)

    def ask(index: int) -> tuple[int, dict[str, np.ndarray]]:
        outputs = asks[index % 3]
        return index, client.infer("tiny_bert_dynamic", requests[index], binary=True, outputs=outputs)

    with ThreadPoolExecutor(8) as pool:  # a client per thread: the batcher stacks their requests
        answers = dict(pool.map(ask, range(24)))
    assert sorted(answers) == list(range(24))
    for index, answer in answers.items():
        assert sorted(answer) == sorted(asks[index % 3] or names)
        for name, value in answer.items():
            np.testing.assert_allclose(value, expected[index][name], atol=1e-3, rtol=1e-2)


def test_serve_cli_finishes_in_flight_requests_and_leaves_no_process_when_sigterm_arrives(
    dynamic_bert_bundle: PublishedBundle,
) -> None:
    process = start_cli(str(dynamic_bert_bundle.path), "--port", "0", "--metrics-port", "0")
    seen = wait_for_line(process, "ready:", START_TIMEOUT_S)
    assert seen["url"].startswith("http://127.0.0.1:")
    assert '"name": "tiny_bert_dynamic"' in seen["model tiny_bert_dynamic"]
    children = descendants(process.pid)
    assert children  # tritonserver and its backend stub
    client = ServeClient(seen["url"], timeout_s=60)
    request = bert_request(8, 32)
    with load_bundle(dynamic_bert_bundle.path) as reference:
        expected = reference(**{k: torch.from_numpy(v) for k, v in request.items()})["pooler_output"].numpy()
    # (start, end, outcome) of every request; each thread stops at 200 requests or 60 s.
    results: list[tuple[float, float, str]] = []
    stop_sending = threading.Event()
    deadline = time.monotonic() + 60

    def caller() -> None:
        for _ in range(200):
            if stop_sending.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                answer = client.infer("tiny_bert_dynamic", request)["pooler_output"]
                outcome = "ok" if np.allclose(answer, expected, atol=1e-3, rtol=1e-2) else "wrong answer"
            except RequestError as exc:
                outcome = f"HTTP {exc.status}: {exc.message}"
            except OSError as exc:
                outcome = f"connection: {exc}"
            results.append((started, time.monotonic(), outcome))

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    stop_sending.set()
    sigterm_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    exited_after = time.monotonic() - sigterm_at
    for thread in threads:
        thread.join(timeout=30)
    # A request the client started just before the signal may reach the server only after it:
    # Triton then refuses the connection at the door. Requests sent earlier were in the server.
    reached = sigterm_at - CONNECT_MARGIN_S
    in_flight = [outcome for started, ended, outcome in results if started < sigterm_at < ended]
    racing = {outcome for started, _, outcome in results if reached <= started < sigterm_at}
    assert process.returncode == 0
    assert exited_after < 30
    assert "ok" in in_flight, in_flight  # requests in flight at SIGTERM were answered
    assert {outcome for started, _, outcome in results if started < reached} == {"ok"}
    assert all(o == "ok" or o.startswith("connection:") for o in racing), racing  # never a wrong answer
    assert not [pid for pid in children if alive(pid)]


def test_triton_server_stops_without_waiting_out_its_exit_timeout_when_our_clients_are_done(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    # The launcher's readiness poll, the metadata the CLI prints and the smoke test each open a
    # connection; one left open made every stop wait out Triton's exit timeout and log a failure.
    export_triton(cnn_bundle.path, tmp_path / "models")
    with (tmp_path / "tritonserver.log").open("w") as log:
        server = TritonServer(tmp_path / "models", port=0, metrics_port=0, workdir=tmp_path, log=log)
        server.start(timeout_s=START_TIMEOUT_S)
        try:
            assert server.metadata("tiny_cnn")["name"] == "tiny_cnn"
            assert check_server(server.url, cnn_bundle.path).passed
        finally:
            code = server.stop()
    written = (tmp_path / "tritonserver.log").read_text()
    assert code == 0
    assert "Exit timeout expired" not in written
    # Triton logs once a second while connections are open; a just-closed one may take a moment.
    assert written.count("HTTP service connections") <= 2


def test_check_server_sends_large_golden_sets_in_chunks_when_max_batch_size_is_below_their_rows(
    dynamic_bert_bundle: PublishedBundle, tmp_path: Path
) -> None:
    # A repository tune chose may take fewer rows than the bundle's largest golden set: the
    # smoke test must still check every set, in requests the model's configuration accepts.
    export_triton(
        dynamic_bert_bundle.path, tmp_path / "models", adjust=lambda config: replace(config, max_batch_size=2)
    )
    with (tmp_path / "tritonserver.log").open("w") as log:
        server = TritonServer(tmp_path / "models", port=0, metrics_port=0, workdir=tmp_path, log=log)
        server.start(timeout_s=START_TIMEOUT_S)
        try:
            with ServeClient(server.url) as client:
                assert client.max_batch_size("tiny_bert_dynamic") == 2
                with pytest.raises(RequestError):  # what the chunks stand in for
                    client.infer("tiny_bert_dynamic", bert_request(batch=3, seq=16), binary=True)
            result = check_server(server.url, dynamic_bert_bundle.path, timeout_s=30)
        finally:
            server.stop()
    assert result.passed, result.summary()
    chunked = {check.name for check in result.sets if "sent as" in check.detail}
    assert chunked == {"max", "odd"}, result.summary()


def test_serve_cli_never_reports_ready_and_logs_why_when_repository_bundle_is_tampered(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    exported = export_triton(cnn_bundle.path, tmp_path / "models")
    flip_byte(exported.model_dir / "1" / "bundle" / "model" / "model.pt2")
    process = start_cli(str(tmp_path / "models"), "--port", "0", "--metrics-port", "0")
    try:
        stdout, stderr = process.communicate(timeout=START_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert "url:" not in stdout and "ready:" not in stdout
    assert "bundle refused" in stderr
    assert "model/model.pt2: sha256 does not match the manifest (modified or corrupt)" in stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: tritonserver exited with code 1: bundle refused (tiny_cnn_0_0 on cpu): "
        "model/model.pt2: sha256 does not match the manifest (modified or corrupt)"
    )
    assert processes_mentioning(str(tmp_path)) == []
    assert os.path.exists(tmp_path / "models")  # the operator's repository is left as it was


def test_check_cli_passes_every_golden_set_when_server_serves_the_bundle(
    server: TritonServer, cnn_bundle: PublishedBundle
) -> None:
    completed = cli("pipeline.serve", "check", server.url, str(cnn_bundle.path))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "PASS: 4/4 golden sets of tiny_cnn"


def test_check_cli_exits_1_naming_each_failed_set_when_server_serves_another_model(
    server: TritonServer, cnn_bundle: PublishedBundle
) -> None:
    completed = cli(
        "pipeline.serve", "check", server.url, str(cnn_bundle.path), "--model", "tiny_bert_dynamic"
    )
    assert completed.returncode == 1
    lines = completed.stdout.strip().splitlines()
    assert lines[0].startswith("FAIL opt: HTTP 400: ") and "missing required input(s)" in lines[0]
    assert lines[-1] == "FAIL: 0/4 golden sets of tiny_bert_dynamic"
