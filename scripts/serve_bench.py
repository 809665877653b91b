"""What serving costs over calling the loaded model in process, and what dynamic batching buys.

On a GPU host with the ``serve`` wheels (scripts/gpu-serve.sh runs it)::

    python3 scripts/serve_bench.py latency BUNDLE [--requests 500] [--json OUT]
    python3 scripts/serve_bench.py batching BUNDLE [--seconds 5] [--clients 32] [--json OUT]

``latency`` (a static bundle, e.g. BERT fp16 1x128): p50/p99 of, side by side in one process,
(a) the loaded model on inputs already on the GPU, outputs left there; (b) the same from host
arrays to host arrays, as the server's backend does it (input checks on the host, copy in, call,
copy out); (c) through tritonserver over HTTP, one kept-alive connection, tensors as raw bytes
(Triton's binary extension; JSON would spend milliseconds printing BERT's 98,304 hidden-state
numbers); (d) the same asking for the smallest output only (what the answer's bytes cost).
The ways take turns, ``--block`` calls each (1: call by call). Where the time goes: Triton's
counters (queue, copies, the backend's execute), the served model's own phases
(``PIPELINE_SERVE_PROFILE``: checks and copy in, the model with its GPU time, copy out, building
the answer), and what is left for the client and HTTP (p50 over HTTP minus Triton's request time).

``batching`` (a bundle whose inputs share a dynamic batch dimension, e.g. ``bert_dynamic``):
requests of batch 1 from one client one after another, then from ``--clients`` threads at once;
requests per second of each, their ratio, and the batches Triton actually ran (from its metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.models.inputs import make_inputs
from pipeline.runtime import load_bundle
from pipeline.serve import ServeClient, export_triton
from pipeline.serve.server import TritonServer
from pipeline.serve.serving import PROFILE_VARIABLE, ServedBundle


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds."""
    ordered = sorted(samples_s)
    return {
        "p50_ms": round(1e3 * statistics.median(ordered), 4),
        "p99_ms": round(1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
        "mean_ms": round(1e3 * statistics.fmean(ordered), 4),
    }


def timed(call: Callable[[], Any], requests: int, warmup: int = 20) -> dict[str, float]:
    """Latency of ``call`` (which returns only once its answer is on the host or synchronized)."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def started_server(bundle: Path, workdir: Path) -> tuple[TritonServer, str]:
    exported = export_triton(bundle, workdir / "models")
    log = (workdir / "tritonserver.log").open("w")
    server = TritonServer(workdir / "models", port=0, metrics_port=0, workdir=workdir, log=log)
    server.start(timeout_s=300)
    return server, exported.config.name


def latency(bundle: Path, requests: int, block: int = 1, warmup: int = 50) -> dict[str, Any]:
    served = ServedBundle.load(bundle)
    model = served.loaded
    on_gpu = make_inputs(model.specs, 1, model.precision, model.device)
    on_host = {spec.name: t.cpu().numpy() for spec, t in zip(model.specs, on_gpu, strict=True)}
    device_ms: list[float] = []

    def in_process_gpu() -> None:
        if model.device.type != "cuda":
            model(*on_gpu)
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        model(*on_gpu)
        end.record()
        end.synchronize()
        device_ms.append(begin.elapsed_time(end))

    def in_process_host() -> None:
        (outcome,) = served.run([on_host])
        assert outcome.error is None, outcome.error

    requests -= requests % block  # whole blocks: every way gets the same number of calls
    result: dict[str, Any] = {"bundle": bundle.name, "requests": requests, "block": block}
    with tempfile.TemporaryDirectory() as workdir:
        # The server's model times its phases (logged when it unloads); this process's does not.
        os.environ[PROFILE_VARIABLE] = "1"
        try:
            server, name = started_server(bundle, Path(workdir))
        finally:
            del os.environ[PROFILE_VARIABLE]
        try:
            # From the first request on: the served model's profile covers every request too.
            counters = (*SERVER_TIMES, "nv_inference_request_success")
            before = {key: server.metric(key, name) for key in counters}
            client = ServeClient(server.url)
            answer = client.infer(name, on_host, binary=True)
            reference = served.run([on_host])[0].outputs
            result["http_equals_in_process"] = all(
                np.array_equal(answer[key], reference[key]) for key in reference
            )

            smallest = min(reference, key=lambda key: reference[key].nbytes)
            result["smallest_output"] = smallest

            def http() -> None:
                client.infer(name, on_host, binary=True)

            def http_smallest_output() -> None:
                client.infer(name, on_host, outputs=[smallest], binary=True)

            calls = {
                "in_process_gpu": in_process_gpu,
                "in_process_host": in_process_host,
                "http_binary": http,
                "http_binary_smallest_output": http_smallest_output,
            }
            for call in calls.values():
                for _ in range(warmup):
                    call()
            device_ms.clear()
            # Taking turns, so that every way sees the GPU in the same state (clocks, other work).
            samples: dict[str, list[float]] = {label: [] for label in calls}
            for _ in range(requests // block):
                for label, call in calls.items():
                    for _ in range(block):
                        start = time.perf_counter()
                        call()
                        samples[label].append(time.perf_counter() - start)
            success = "nv_inference_request_success"
            count = server.metric(success, name) - before[success]
            # Where a request's time went inside the server (Triton's cumulative counters, in us).
            result["server_mean_ms"] = {
                key.removeprefix("nv_inference_").removesuffix("_duration_us"): round(
                    (server.metric(key, name) - before[key]) / 1e3 / max(count, 1), 4
                )
                for key in SERVER_TIMES
            }
            client.close()
        finally:
            server.stop()
        log = (Path(workdir) / "tritonserver.log").read_text(errors="replace")
        profiles = re.findall(r"serving profile over [^\"\n]*", log)  # Triton quotes the message
        result["backend_profile"] = profiles[-1] if profiles else "not logged"
    for label, values in samples.items():
        result[label] = percentiles(values)
    if device_ms:
        result["in_process_gpu"]["gpu_p50_ms"] = round(statistics.median(device_ms), 4)
    for baseline in ("in_process_gpu", "in_process_host"):
        result[f"http_adds_p50_ms_over_{baseline}"] = round(
            result["http_binary"]["p50_ms"] - result[baseline]["p50_ms"], 4
        )
    # Both HTTP ways count in Triton's request time: their mean p50 is the fair comparison.
    http_p50 = statistics.fmean(
        result[key]["p50_ms"] for key in ("http_binary", "http_binary_smallest_output")
    )
    result["client_and_http_ms"] = round(http_p50 - result["server_mean_ms"]["request"], 4)
    phases = dict(re.findall(r"(\w+) ([0-9.]+) ms", result["backend_profile"]))
    if "execute" in phases:
        result["stub_round_trip_ms"] = round(
            result["server_mean_ms"]["compute_infer"] - float(phases["execute"]), 4
        )
    served.close()
    return result


#: Triton's cumulative per-model times: request (all), queue, input copy, execute, output copy.
SERVER_TIMES = (
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


def throughput(
    client: ServeClient, name: str, request: dict[str, np.ndarray], clients: int, seconds: float
) -> float:
    """Requests per second answered when ``clients`` threads each send requests back to back."""
    counts = [0] * clients
    deadline = time.perf_counter() + seconds
    failures: list[BaseException] = []

    def loop(index: int) -> None:
        try:
            while time.perf_counter() < deadline:
                client.infer(name, request, binary=True)
                counts[index] += 1
        except BaseException as exc:  # reported below, not swallowed
            failures.append(exc)
        finally:
            client.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return sum(counts) / (time.perf_counter() - start)


def batching(bundle: Path, seconds: float, clients: int) -> dict[str, Any]:
    loaded = load_bundle(bundle)
    specs, precision = loaded.specs, loaded.precision
    loaded.close()
    tensors = make_inputs(specs, 2, precision, "cpu")  # the opt shape: batch 1 for bert_dynamic
    request = {spec.name: t.numpy() for spec, t in zip(specs, tensors, strict=True)}
    result: dict[str, Any] = {
        "bundle": bundle.name,
        "request_shape": {k: list(v.shape) for k, v in request.items()},
    }
    with tempfile.TemporaryDirectory() as workdir:
        server, name = started_server(bundle, Path(workdir))
        try:
            client = ServeClient(server.url, timeout_s=120)
            for _ in range(20):
                client.infer(name, request, binary=True)
            client.close()
            runs = (("serial", 1), ("concurrent", clients))
            for label, threads in runs:
                inferences = server.metric("nv_inference_count", name)
                executions = server.metric("nv_inference_exec_count", name)
                rate = throughput(client, name, request, threads, seconds)
                inferences = server.metric("nv_inference_count", name) - inferences
                executions = server.metric("nv_inference_exec_count", name) - executions
                result[label] = {
                    "clients": threads,
                    "requests_per_s": round(rate, 1),
                    "mean_batch": round(inferences / executions, 2) if executions else None,
                }
        finally:
            server.stop()
    result["concurrent_over_serial"] = round(
        result["concurrent"]["requests_per_s"] / result["serial"]["requests_per_s"], 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("latency", "batching"))
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--block", type=int, default=1, help="latency: calls of one way before the next")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.block < 1 or args.requests < args.block:
        parser.error("--block must be >= 1 and at most --requests")
    if args.mode == "latency":
        result = latency(args.bundle, args.requests, args.block)
    else:
        result = batching(args.bundle, args.seconds, args.clients)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
