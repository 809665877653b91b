"""Loads a bundle in a fresh process and reports, as JSON, what is true of it there.

``python -m tests.gpu.probe BUNDLE [BUNDLE ...] [--runtime NAME]``: for each bundle in turn (each
loaded alone, then freed), which packages the load imported, engines
found and their settings read back from the engine objects, the CUDA-graph mode seen during a
call, the golden check, latency, GPU memory in use while idle after calls, and load timings.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: Packages a deployment host's load must not import (compiler, configuration, stages).
HEAVY_MODULES = ("torch_tensorrt", "hydra", "omegaconf", "pipeline.stages", "pipeline.config.loading")


def engine_states(loaded: Any) -> dict[str, dict[str, Any]]:
    """Settings read back from each engine object (or own runner) of a loaded model."""
    return {path: engine_state(engine) for path, engine in loaded.executor.engine_objects().items()}


def engine_state(engine: Any) -> dict[str, Any]:
    """Settings read back from one engine object (or own runner)."""
    from pipeline.runtime.rtx_runner import RtxEngineRunner

    if isinstance(engine, RtxEngineRunner):
        settings = engine.settings
        return {
            "runner": "tensorrt_rtx",
            "pre_allocated_outputs": settings.pre_allocated_outputs,
            "resource_allocation_strategy": "1" if settings.dynamic_allocation else "0",
            "cuda_graphs": settings.cuda_graphs,
            "kernel_specialization": getattr(settings.kernel_specialization, "value", None),
            "rtx_cuda_graphs": getattr(settings.rtx_cuda_graphs, "value", None),
            "use_cache": settings.use_cache,
        }
    state: dict[str, Any] = {"pre_allocated_outputs": bool(engine.use_pre_allocated_outputs)}
    flat = dict(engine.__obj_flatten__())
    for key, value in flat.items():
        if "resource" in key or "strategy" in key:
            state[key] = value
    return state


def probe_in_fresh_process(
    bundle: Path, runtime: str | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Run this module on ``bundle`` in a new Python process (in ``cwd``) and return its report."""
    return probe_many_in_fresh_process([bundle], runtime, cwd)[0]


def probe_many_in_fresh_process(
    bundles: list[Path], runtime: str | None = None, cwd: Path | None = None, extra: list[str] | None = None
) -> list[dict[str, Any]]:
    """Probe ``bundles`` one after another in one new Python process; a report per bundle
    (``extra``: more options, e.g. ``--sequence``)."""
    command = [sys.executable, "-m", "tests.gpu.probe", *map(str, bundles), *(extra or [])]
    if runtime is not None:
        command += ["--runtime", runtime]
    repository = str(Path(__file__).resolve().parents[2])
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([repository, os.environ.get("PYTHONPATH", "")]),
    }
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=600, cwd=cwd, env=environment
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports: list[dict[str, Any]] = json.loads(completed.stdout.strip().splitlines()[-1])
    return reports


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument(
        "--sequence",
        default=None,
        help="safetensors of input sets and eager outputs ('<set>/input.<name>', '<set>/output.<i>'); "
        "each bundle is then also called on them in --order and compared",
    )
    parser.add_argument("--order", default="", help="comma-separated set names, e.g. b1,b7,b32,b7,b1")
    args = parser.parse_args()
    reports = []
    for bundle in args.bundles:
        report = probe(bundle, args.runtime, args.iterations)
        if args.sequence:
            report["sequence"] = call_sequence(bundle, args.sequence, args.order.split(","), args.iterations)
        reports.append(report)
        gc.collect()  # the next bundle's memory baseline starts without this one
    print(json.dumps(reports))


def probe(bundle: str, runtime: str | None, iterations: int) -> dict[str, Any]:
    """Load ``bundle`` and report what is true of it, then let it go."""
    import pipeline
    from pipeline.timing import gpu_memory_in_use, measure_latency

    torch.zeros(1, device="cuda")  # CUDA initialised before the load is timed
    baseline = gpu_memory_in_use()
    start = time.perf_counter()
    loaded = pipeline.load_bundle(bundle, runtime=runtime)
    load_seconds = time.perf_counter() - start
    from pipeline.models import make_inputs

    inputs = make_inputs(loaded.specs, 7, loaded.precision, loaded.device)
    start = time.perf_counter()
    loaded(*inputs)
    torch.cuda.synchronize()
    first_call_seconds = time.perf_counter() - start
    imported = {
        name: any(m == name or m.startswith(name + ".") for m in sys.modules) for name in HEAVY_MODULES
    }

    from pipeline.runtime.tensorrt import cudagraphs_enabled

    seen_modes: list[bool] = []
    with loaded._call_context:
        seen_modes.append(cudagraphs_enabled())
    seen_modes.append(cudagraphs_enabled())

    from pipeline.runtime.loader import verify_loaded

    golden = verify_loaded(loaded)
    latency = measure_latency(lambda: loaded(*inputs), warmup=30, iterations=iterations)
    idle = gpu_memory_in_use()
    report = {
        "bundle": bundle,
        "policy": loaded.policy.name,
        "engines_configured": loaded.policy_report.engines_configured,
        "load_report_engines": loaded.load_report["engines"],
        "engines_in_manifest": loaded.manifest.engine_count,
        "engines": engine_states(loaded),
        "imported": imported,
        "cuda_graphs_during_call": seen_modes[0],
        "cuda_graphs_after_call": seen_modes[1],
        "golden": golden.summary(),
        "golden_passed": golden.passed,
        "golden_sets": sorted({c.input_set for c in golden.comparisons}),
        "latency_ms": latency.median_ms,
        "latency_p90_ms": latency.p90_ms,
        # Device-wide: what this process added to its own baseline.
        "idle_memory_bytes": idle - baseline,
        "load_seconds": load_seconds,
        "load_steps": loaded.load_seconds,
        "first_call_seconds": first_call_seconds,
    }
    return report


def call_sequence(bundle: str, sequence: str, order: list[str], iterations: int) -> dict[str, Any]:
    """Call ``bundle`` on the input sets of ``sequence`` in ``order`` (shapes changing between
    calls), comparing each output with eager's; then time a steady shape against alternating ones."""
    from safetensors.torch import load_file

    import pipeline
    from pipeline.config.schema import Tolerance
    from pipeline.runtime.format import golden_sets
    from pipeline.runtime.verification import compare
    from pipeline.timing import measure_latency

    loaded = pipeline.load_bundle(bundle)
    names = [spec.name for spec in loaded.specs]
    sets = golden_sets(load_file(sequence), names, len(loaded.manifest.outputs))
    tolerance = Tolerance(**loaded.manifest.verification["tolerance"])
    inputs = {name: tuple(t.cuda() for t in pair[0]) for name, pair in sets.items()}
    calls = []
    for name in order:
        outputs = loaded(*inputs[name])
        comparisons = compare(name, outputs, sets[name][1], tolerance)
        calls.append(
            {"set": name, "passed": all(c.passed for c in comparisons), "shape": list(outputs[0].shape)}
        )
    first, second = order[1], order[2]
    steady = {
        name: measure_latency(lambda n=name: loaded(*inputs[n]), 20, iterations).median_ms
        for name in (first, second)
    }
    turn = itertools.cycle((inputs[first], inputs[second]))
    alternating = measure_latency(lambda: loaded(*next(turn)), 20, iterations).median_ms

    return {
        "calls": calls,
        "policy": loaded.policy.name,
        "engines": engine_states(loaded),
        "steady_ms": steady,
        "alternating_ms": alternating,
        "shape_change_ms": alternating - (steady[first] + steady[second]) / 2,
    }


if __name__ == "__main__":
    main()
