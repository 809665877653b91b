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

# No `from __future__ import annotations`: FastAPI reads the routes' parameter types at runtime.
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
from pathlib import Path
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from ray import serve

from pipeline.runtime import open_bundle
from pipeline.runtime.archive import release_unpacked
from pipeline.serve.serving import Outcome, ServedBundle
from pipeline.serve.triton_config import read_golden_shapes, triton_config, v2_metadata
from pipeline.serve.v2_http import HEADER_LENGTH, infer_answer, parse_infer_request

#: Seconds a replica waits to stack requests that arrive together.
BATCH_WAIT_S = 0.002

routes = FastAPI()


def bundle_archive(bundle: Path) -> bytes:
    """The bundle as one .tar in memory (an archive is read as it is)."""
    if bundle.is_file():
        return bundle.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(bundle, arcname=bundle.name)
    return buffer.getvalue()


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(routes)
class BundleReplica:
    """One Ray Serve replica: the loaded bundle behind the v2 routes."""

    def __init__(self, archive: list[Any], metadata: dict[str, Any], max_batch_size: int) -> None:
        import ray
        import torch

        # Ray hands each GPU replica exactly one GPU (CUDA_VISIBLE_DEVICES): it is cuda:0 here.
        device = "cuda:0" if torch.cuda.is_available() and ray.get_gpu_ids() else None
        self._scratch = tempfile.TemporaryDirectory(prefix="pipeline-ray-")
        path = Path(self._scratch.name) / "bundle.tar"
        path.write_bytes(ray.get(archive[0]))
        self.served = ServedBundle.load(path, device=device, batching=max_batch_size > 0)
        batched: Any = self._run_batch  # serve.batch's wrapper (typed as the plain method)
        batched.set_max_batch_size(max(max_batch_size, 1))
        self.metadata = metadata
        self.name = str(metadata["name"])

    @routes.get("/v2/health/live")
    @routes.get("/v2/health/ready")
    async def health(self) -> dict[str, Any]:
        """Live and ready: a replica takes requests only after its golden check passed."""
        return {}

    @routes.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        """v2 server metadata: the binary tensor data extension is spoken here too."""
        return {"name": "pipeline-ray-serve", "version": "1", "extensions": ["binary_tensor_data"]}

    @routes.get("/v2/models/{model}")
    @routes.get("/v2/models/{model}/versions/1")
    @routes.get("/v2/models/{model}/ready")
    async def model_metadata(self, model: str) -> Response:
        """The model's v2 metadata (or ready: the same, 200)."""
        return self._unknown(model) or JSONResponse(self.metadata)

    @routes.post("/v2/models/{model}/infer")
    @routes.post("/v2/models/{model}/versions/1/infer")
    async def infer(self, model: str, request: Request) -> Response:
        """A v2 infer request, JSON or in Triton's binary tensor extension (answered the same way)."""
        unknown = self._unknown(model)
        if unknown is not None:
            return unknown
        header_length = request.headers.get(HEADER_LENGTH)
        parsed = parse_infer_request(await request.body(), header_length)
        if isinstance(parsed, dict):
            parsed = infer_answer(self.name, await self._run_batch(parsed), binary=header_length is not None)
        return Response(parsed.body, status_code=parsed.status, headers=parsed.headers)

    @serve.batch(batch_wait_timeout_s=BATCH_WAIT_S)
    async def _run_batch(self, requests: list[dict[str, Any]]) -> list[Outcome]:
        # The requests that arrived together (up to the model's maximum batch): one call.
        return await asyncio.to_thread(self.served.run, requests)

    def _unknown(self, model: str) -> Response | None:
        if model == self.name:
            return None
        return JSONResponse({"error": f"no model {model!r}; this server has {self.name!r}"}, status_code=404)


def build_app(bundle: Path, replicas: int = 1) -> tuple[Any, dict[str, Any]]:
    """The Ray Serve application for ``bundle`` and its v2 metadata (call after ``ray.init``)."""
    import ray

    opened = open_bundle(bundle)
    root, manifest = opened.root, opened.manifest
    try:
        config = triton_config(manifest, read_golden_shapes(root))
    finally:
        release_unpacked(root)
    metadata = v2_metadata(config, platform="ray_serve")
    gpu = manifest.device.startswith("cuda")
    replica: Any = BundleReplica  # a serve.deployment (typed as the plain class)
    deployment = replica.options(
        name=config.name,
        num_replicas=replicas,
        ray_actor_options={"num_gpus": 1 if gpu else 0, "num_cpus": 1 if not gpu else 0},
    )
    archive_ref = ray.put(bundle_archive(bundle))
    # Nested in a list, so Ray hands the replica the reference, not 200 MB in its constructor args.
    app = deployment.bind([archive_ref], metadata, config.max_batch_size)
    return app, metadata


def serve_on_ray(bundle: Path, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> int:
    """Serve ``bundle`` on Ray Serve until SIGTERM or Ctrl-C; returns the exit code."""
    import ray

    joining = bool(os.environ.get("RAY_ADDRESS"))
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
