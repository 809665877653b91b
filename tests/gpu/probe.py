"""Loads a bundle in a fresh process and reports, as JSON, what is true of it there.

``python -m tests.gpu.probe BUNDLE [--runtime NAME]``: engines found and their settings read
back from the engine objects, the CUDA-graph mode seen during a call, the golden check, latency
and GPU memory in use while idle after calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline import load_bundle
from pipeline.backends.engines import find_engines
from pipeline.bundle.loader import verify_bundle
from pipeline.models import make_inputs
from pipeline.timing import gpu_memory_in_use, measure_latency


def engine_state(engine: Any) -> dict[str, Any]:
    """Settings read back from one engine object."""
    state: dict[str, Any] = {"pre_allocated_outputs": bool(engine.use_pre_allocated_outputs)}
    flat = dict(engine.__obj_flatten__())
    for key, value in flat.items():
        if "resource" in key or "strategy" in key:
            state[key] = value
    state["flatten_keys"] = sorted(flat)
    return state


def probe_in_fresh_process(bundle: Path, runtime: str | None = None) -> dict[str, Any]:
    """Run this module on ``bundle`` in a new Python process and return its JSON report."""
    command = [sys.executable, "-m", "tests.gpu.probe", str(bundle)]
    if runtime is not None:
        command += ["--runtime", runtime]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()

    baseline = gpu_memory_in_use()
    start = time.perf_counter()
    loaded = load_bundle(args.bundle, runtime=args.runtime)
    load_seconds = time.perf_counter() - start
    inputs = make_inputs(loaded.specs, 7, loaded.precision, loaded.device)
    start = time.perf_counter()
    loaded(*inputs)
    torch.cuda.synchronize()
    first_call_seconds = time.perf_counter() - start

    import torch_tensorrt

    seen_modes: list[bool] = []
    with loaded._call_context:
        seen_modes.append(bool(torch_tensorrt.runtime.get_cudagraphs_mode()))
    seen_modes.append(bool(torch_tensorrt.runtime.get_cudagraphs_mode()))

    latency = measure_latency(lambda: loaded(*inputs), warmup=30, iterations=args.iterations)
    idle = gpu_memory_in_use()
    report = {
        "bundle": args.bundle,
        "policy": loaded.policy.name,
        "engines_configured": loaded.policy_report.engines_configured,
        "engines_in_manifest": loaded.manifest.engine_count,
        "engines": {ref.path: engine_state(ref.engine) for ref in find_engines(loaded.module)},
        "cuda_graphs_during_call": seen_modes[0],
        "cuda_graphs_after_call": seen_modes[1],
        "golden": verify_bundle(args.bundle).summary() if args.runtime is None else None,
        "latency_ms": latency.median_ms,
        "latency_p90_ms": latency.p90_ms,
        "idle_memory_bytes": idle,
        "baseline_memory_bytes": baseline,
        "load_seconds": load_seconds,
        "first_call_seconds": first_call_seconds,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
