"""Serving a bundle on Ray Serve, with the same KServe v2 JSON routes as Triton.

``python -m pipeline.serve BUNDLE --ray [--replicas N]`` starts a local Ray instance (on
127.0.0.1) or joins the cluster that ``RAY_ADDRESS`` names (``ray start --head`` / KubeRay, as
Ray does). The bundle travels through Ray's object store as one archive, so replicas on other
nodes need no shared file system; each replica checks it (sha256, signature under its host's
``PIPELINE_TRUSTED_KEYS``), loads it once, on its own GPU on GPU hosts (one GPU per replica), and
runs its golden check before it takes requests. Requests arriving together are stacked into one
call where the model batches (``serve.batch``), like Triton's dynamic batcher.

Routes: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/<name>``,
``/v2/models/<name>/ready``, ``POST /v2/models/<name>/infer``; a bad input answers 400 with the
loaded model's one-line message.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from pipeline.errors import PipelineError, one_line
from pipeline.runtime import open_bundle
from pipeline.runtime.archive import release_unpacked
from pipeline.serve.client import (
    HEADER_LENGTH,
    decode_binary_request,
    decode_tensor,
    encode_binary_answer,
    encode_tensor,
)
from pipeline.serve.serving import Outcome, ServedBundle
from pipeline.serve.triton_config import read_golden_shapes, triton_config, v2_metadata

#: Seconds a replica waits to stack requests that arrive together.
BATCH_WAIT_S = 0.002


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


def parse_infer_request(body: bytes, header_length: str | None) -> dict[str, Any] | HttpAnswer:
    """The inputs of a v2 infer request (JSON, or Triton's binary tensor extension when
    ``header_length`` is given), or the 400 answer saying in one line why it is malformed.

    Whatever the body holds, the result is inputs or a 400: a malformed request is never the
    server's error."""
    try:
        if header_length is not None:
            length = int(header_length)
            if not 0 < length <= len(body):
                raise ValueError(f"{HEADER_LENGTH} {header_length} outside the body's {len(body)} bytes")
            return decode_binary_request(body, length)
        if not body.strip():
            raise ValueError('empty body; expected a KServe v2 infer request: {"inputs": [...]}')
        payload = json.loads(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise ValueError("expected a JSON object with an 'inputs' list")
        entries = payload["inputs"]
        if not all(isinstance(entry, dict) for entry in entries):
            raise ValueError("each of 'inputs' must be a JSON object (name, shape, datatype, data)")
        names = [entry.get("name") for entry in entries]
        if len(set(map(str, names))) != len(names):
            raise ValueError("an input is given twice")
        return dict(decode_tensor(entry) for entry in entries)
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as exc:
        return HttpAnswer.error(400, f"malformed v2 request: {one_line(exc)}")


def infer_answer(model: str, outcome: Outcome, binary: bool) -> HttpAnswer:
    """The answer to one request: its outputs (JSON, or binary as asked), or its one-line error
    (400: the caller's inputs, 500: the server's failure)."""
    if outcome.error is not None:
        return HttpAnswer.error(400 if outcome.invalid else 500, outcome.error)
    if binary:
        answer, length = encode_binary_answer(model, outcome.outputs)
        return HttpAnswer(
            200, answer, {"content-type": "application/octet-stream", HEADER_LENGTH: str(length)}
        )
    outputs = [encode_tensor(name, value) for name, value in outcome.outputs.items()]
    # allow_nan=False: served answers are finite (ServedBundle refuses others); JSON has no NaN.
    return HttpAnswer(
        200,
        json.dumps({"model_name": model, "model_version": "1", "outputs": outputs}, allow_nan=False).encode(),
    )


def bundle_archive(bundle: Path) -> bytes:
    """The bundle as one .tar in memory (an archive is read as it is)."""
    if bundle.is_file():
        return bundle.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(bundle, arcname=bundle.name)
    return buffer.getvalue()


class BundleReplica:
    """One Ray Serve replica: the loaded bundle and the v2 routes (wrapped by ``serve.deployment``
    in :func:`build_app`)."""

    def __init__(self, archive: list[Any], metadata: dict[str, Any], batching: bool) -> None:
        import ray
        import torch

        # Ray hands each GPU replica exactly one GPU (CUDA_VISIBLE_DEVICES): it is cuda:0 here.
        device = "cuda:0" if torch.cuda.is_available() and ray.get_gpu_ids() else None
        self._scratch = tempfile.TemporaryDirectory(prefix="pipeline-ray-")
        path = Path(self._scratch.name) / "bundle.tar"
        path.write_bytes(ray.get(archive[0]))
        self.served = ServedBundle.load(path, device=device, batching=batching)
        self.metadata = metadata
        self.name = str(metadata["name"])

    async def __call__(self, request: Any) -> Any:
        """Route a Starlette request."""
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        model_path = f"/v2/models/{self.name}"
        if request.method == "GET" and path in ("/v2/health/live", "/v2/health/ready", f"{model_path}/ready"):
            return JSONResponse({})
        if request.method == "GET" and path in (model_path, f"{model_path}/versions/1"):
            return JSONResponse(self.metadata)
        if request.method == "POST" and path in (f"{model_path}/infer", f"{model_path}/versions/1/infer"):
            header_length = request.headers.get(HEADER_LENGTH)
            return await self._infer(await request.body(), header_length)
        return JSONResponse(
            {"error": f"no route {request.method} {path}; model: {self.name}"}, status_code=404
        )

    async def _infer(self, body: bytes, header_length: str | None = None) -> Any:
        """A v2 infer request, JSON or in Triton's binary tensor extension (answered the same way)."""
        from starlette.responses import Response

        parsed = parse_infer_request(body, header_length)
        if isinstance(parsed, HttpAnswer):
            answer = parsed
        else:
            # serve.batch turns one call per request into one call per batch of requests.
            batched: Any = self._infer_batch
            answer = infer_answer(self.name, await batched(parsed), binary=header_length is not None)
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    async def _infer_batch(self, requests: list[dict[str, Any]]) -> list[Any]:
        # Wrapped by serve.batch in build_app: the requests that arrived together, one call.
        return await asyncio.to_thread(self.served.run, requests)


def build_app(bundle: Path, replicas: int = 1) -> tuple[Any, dict[str, Any]]:
    """The Ray Serve application for ``bundle`` and its v2 metadata (call after ``ray.init``)."""
    import ray
    from ray import serve

    opened = open_bundle(bundle)
    root, manifest = opened.root, opened.manifest
    try:
        config = triton_config(manifest, read_golden_shapes(root))
    finally:
        release_unpacked(root)
    metadata = v2_metadata(config, platform="ray_serve")
    gpu = manifest.device.startswith("cuda")
    batch = serve.batch(max_batch_size=max(config.max_batch_size, 1), batch_wait_timeout_s=BATCH_WAIT_S)
    replica_class = type(
        "BundleReplica", (BundleReplica,), {"_infer_batch": batch(BundleReplica._infer_batch)}
    )
    deployment = serve.deployment(
        name=config.name,
        num_replicas=replicas,
        ray_actor_options={"num_gpus": 1 if gpu else 0, "num_cpus": 1 if not gpu else 0},
        max_ongoing_requests=64,
    )(replica_class)
    archive_ref = ray.put(bundle_archive(bundle))
    # Nested in a list, so Ray hands the replica the reference, not 200 MB in its constructor args.
    app = deployment.bind([archive_ref], metadata, config.max_batch_size > 0)
    return app, metadata


def serve_on_ray(bundle: Path, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> int:
    """Serve ``bundle`` on Ray Serve until SIGTERM or Ctrl-C; returns the exit code."""
    joining = bool(os.environ.get("RAY_ADDRESS"))
    if not joining:
        # A local instance stays on the loopback: with clustering off, Ray binds its own services
        # (GCS, raylet, agents) to 127.0.0.1 instead of the host's address. Read at import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError as missing:
        raise PipelineError(
            f"--ray needs Ray Serve ({missing.name} is not installed): pip install 'trt-pipeline[ray]'"
        ) from None
    from pipeline.serve.server import free_port

    if port == 0:
        port = free_port(host if host not in ("0.0.0.0", "") else "127.0.0.1")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # A cluster is joined as RAY_ADDRESS says.
    init_options: dict[str, Any] = {} if joining else {"_node_ip_address": "127.0.0.1"}
    ray.init(include_dashboard=False, logging_level=logging.WARNING, **init_options)
    # ray.init puts its own SIGTERM handler in (it exits at once): put ours back, so that the
    # replicas drain their in-flight requests through serve.shutdown() first.
    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        app, metadata = build_app(bundle, replicas)
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=str(metadata["name"]), route_prefix="/", blocking=False)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        print(f"url: {url}", flush=True)
        print(f"model {metadata['name']}: {json.dumps(metadata, sort_keys=True)}", flush=True)
        print(
            f"ready: {url}/v2/health/ready ({replicas} Ray Serve replicas; Ctrl-C or SIGTERM stops)",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.shutdown()
        ray.shutdown()
    print("stopped", file=sys.stderr)
    return 0
