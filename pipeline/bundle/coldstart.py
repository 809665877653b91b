"""Cold start of a bundle: process start to first output, one fresh process per measurement.

``python -m pipeline.bundle coldstart BUNDLE`` runs ``python -m pipeline.bundle.coldstart BUNDLE``
(the child) a few times. The child times, from its own start: ``import torch``, CUDA init,
``pipeline.load_bundle`` (with its own steps) and the first call on the golden inputs; the
parent times the whole process, interpreter start included.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def measure_cold_start(
    bundle: str | Path, repeats: int = 3, runtime_cache: str | None = None
) -> dict[str, Any]:
    """Run the child ``repeats`` times; every run's figures and the median of each.

    ``runtime_cache``: load with the recorded policy's ``runtime_cache`` replaced (``off``: no
    TensorRT-RTX runtime cache, kernels compile at load, on Torch-TensorRT's C++ runtime)."""
    runs = []
    for _ in range(repeats):
        start = time.time()
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.bundle.coldstart",
                str(bundle),
                *([runtime_cache] if runtime_cache else []),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if completed.returncode != 0:
            raise RuntimeError(f"cold-start child failed: {completed.stderr[-2000:]}")
        run = json.loads(completed.stdout.strip().splitlines()[-1])
        run["process_to_first_output_s"] = run.pop("first_output_at") - start
        runs.append(run)
    medians = {
        key: statistics.median(run[key] for run in runs) for key in runs[0] if isinstance(runs[0][key], float)
    }
    return {
        "bundle": str(bundle),
        "runtime_cache": runtime_cache or "as recorded",
        "runs": runs,
        "median": medians,
    }


def _child(bundle: str, runtime_cache: str | None = None) -> None:
    start = time.perf_counter()
    import torch

    imported = time.perf_counter()
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
    cuda_ready = time.perf_counter()
    import pipeline

    runtime = None
    if runtime_cache is not None:
        from dataclasses import replace

        from pipeline.runtime.format import read_manifest
        from pipeline.runtime.loader import recorded_policy
        from pipeline.runtime.policy import RuntimeCacheMode

        recorded = recorded_policy(read_manifest(Path(bundle)))  # a bundle directory
        runtime = replace(recorded, runtime_cache=RuntimeCacheMode(runtime_cache))
    loaded = pipeline.load_bundle(bundle, runtime=runtime)
    load_done = time.perf_counter()
    from safetensors.torch import load_file

    from pipeline.runtime.format import GOLDEN_NAME, OPT_SET, golden_sets

    golden = golden_sets(
        load_file(str(Path(loaded.root) / GOLDEN_NAME)),
        [spec.name for spec in loaded.specs],
        len(loaded.manifest.outputs),
    )
    inputs = tuple(tensor.to(loaded.device) for tensor in golden[OPT_SET][0])
    inputs_ready = time.perf_counter()
    loaded(*inputs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    first_output = time.perf_counter()
    wall = time.time()
    report = {
        "import_torch_s": imported - start,
        "cuda_init_s": cuda_ready - imported,
        "load_bundle_s": load_done - cuda_ready,
        "first_call_s": first_output - inputs_ready,
        "load_steps": loaded.load_seconds,
        "torch_tensorrt_imported": "torch_tensorrt" in sys.modules,
        "engines": {key: str(value) for key, value in loaded.load_report.get("engines", {}).items()},
        "first_output_at": wall,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
