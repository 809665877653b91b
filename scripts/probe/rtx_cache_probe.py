"""Where a TensorRT-RTX bundle's load time goes, and whether a runtime cache can spare it.

Run on the GPU host, one mode per fresh process (the order matters: ``py-fill`` writes the cache
that the ``py-cached*`` modes read)::

    for mode in baseline py-fill py-cached py-cached-then-load py-nocache-then-load load-then-load; do
        python3 scripts/probe/rtx_cache_probe.py $mode BUNDLE /tmp/rt.cache
    done

- ``baseline``: ``load_bundle`` alone, with its steps.
- ``py-fill``: the engine file through TensorRT-RTX's Python API: deserialize, then create the
  execution context with an empty runtime cache (TensorRT-RTX compiles its kernels here), and
  save the cache.
- ``py-cached``: the same with the saved cache loaded first.
- ``py-cached-then-load`` / ``py-nocache-then-load``: the Python API first, then ``load_bundle``
  in the same process: does Torch-TensorRT's runtime profit from what the Python API compiled?
- ``load-then-load``: ``load_bundle`` twice in one process.

Each prints one ``PROBE <mode> {json}`` line of seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()
MODE, BUNDLE, CACHE = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

import torch  # noqa: E402  (timed from process start)

torch.zeros(1, device="cuda")
laps: dict[str, Any] = {"import torch + CUDA init": round(time.perf_counter() - START, 3)}


def lap(name: str, since: float) -> None:
    laps[name] = round(time.perf_counter() - since, 3)


def python_api_context(use_cache: bool, save: bool) -> tuple[Any, ...]:
    """Deserialize the bundle's engine and create its execution context through tensorrt_rtx."""
    since = time.perf_counter()
    import tensorrt_rtx as trt

    lap("import tensorrt_rtx", since)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    data = sorted((BUNDLE / "engines").glob("*.engine"))[0].read_bytes()
    since = time.perf_counter()
    engine = runtime.deserialize_cuda_engine(data)
    lap("python deserialize", since)
    config = engine.create_runtime_config()
    cache = config.create_runtime_cache()
    if use_cache and CACHE.exists():
        laps["cache loaded"] = bool(cache.deserialize(CACHE.read_bytes()))
    config.set_runtime_cache(cache)
    since = time.perf_counter()
    context = engine.create_execution_context(config)
    lap("python create execution context", since)
    if save:
        CACHE.write_bytes(bytes(cache.serialize()))
        laps["cache bytes"] = CACHE.stat().st_size
    return runtime, engine, config, cache, context


def load() -> Any:
    from pipeline import load_bundle

    since = time.perf_counter()
    model = load_bundle(BUNDLE)
    lap("load_bundle", since)
    laps["load_bundle steps"] = {step: round(s, 3) for step, s in model.load_seconds.items()}
    return model


kept: list[Any] = []
if MODE == "baseline":
    kept.append(load())
elif MODE in ("py-fill", "py-cached"):
    kept.append(python_api_context(use_cache=MODE == "py-cached", save=MODE == "py-fill"))
elif MODE in ("py-cached-then-load", "py-nocache-then-load"):
    kept.append(python_api_context(use_cache=MODE == "py-cached-then-load", save=False))
    kept.append(load())
elif MODE == "load-then-load":
    kept.append(load())
    laps["first"] = laps.pop("load_bundle steps")
    kept.append(load())
else:
    sys.exit(f"unknown mode {MODE}")
laps["total"] = round(time.perf_counter() - START, 3)
print("PROBE", MODE, json.dumps(laps))
