"""Where the host time of one loaded-model call goes, path by path (GPU host probe).

    python scripts/probe/call_profile.py BUNDLE [--runtime cudagraphs] [--calls 300]

Prints the loaded graph's generated code, then for each path (the loaded model with and without
the value-range check, its graph alone, the own runner alone): the host time until the call
returns (the GPU work still queued), the wall time to the end of its GPU work, and the functions
that took the most host time (cProfile), and the CUDA kernels one call launches (torch.profiler).
What the probe answers: is the gap between the loaded model and the runner alone host-side
Python, or GPU work the graph adds?
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline import load_bundle
from pipeline.models import make_inputs
from pipeline.runtime.executor import RunnerKind


def host_and_wall(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """Median host ms until ``call`` returns, and median ms until its GPU work is done."""
    host, wall = [], []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        returned = time.perf_counter()
        torch.cuda.synchronize()
        host.append((returned - start) * 1e3)
        wall.append((time.perf_counter() - start) * 1e3)
    return statistics.median(host), statistics.median(wall)


def top_functions(call: Callable[[], object], calls: int, limit: int = 14) -> str:
    profile = cProfile.Profile()
    for _ in range(calls):
        profile.enable()
        call()
        profile.disable()
        torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(limit)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    return "\n".join(lines[-(limit + 1) :])


def kernels(call: Callable[[], object]) -> str:
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(5):
            call()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--runtime")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    loaded = load_bundle(args.bundle, runtime=args.runtime)
    print(f"policy {loaded.policy.name}; runner {loaded.load_report.get('engines', {}).get('runner')}")
    print("loaded graph code:\n" + loaded.module.code)  # type: ignore[union-attr]
    inputs = make_inputs(loaded.specs, 0, loaded.precision, loaded.device)
    own = loaded.executor.runner is RunnerKind.rtx
    runners = list(loaded.executor.engine_objects().values()) if own else []
    checked = replace(loaded.policy, check_value_ranges=True)
    unchecked = replace(loaded.policy, check_value_ranges=False)

    def graph_alone() -> object:
        with torch.inference_mode(False), torch.no_grad():
            return loaded.module(*inputs)  # type: ignore[misc]

    paths: dict[str, tuple[Callable[[], object], Callable[[], object] | None]] = {
        "loaded, values checked": (lambda: loaded(*inputs), lambda: loaded.set_runtime(checked)),
        "loaded, values not checked": (lambda: loaded(*inputs), lambda: loaded.set_runtime(unchecked)),
        "graph alone": (graph_alone, None),
    }
    if len(runners) == 1:
        runner = runners[0]
        paths["runner alone"] = (lambda: runner.execute(list(inputs)), None)
    # The first path again, last: a gap that closes here came from the order, not the path.
    paths["loaded, values checked (again, last)"] = paths["loaded, values checked"]
    for name, (call, prepare) in paths.items():
        if prepare is not None:
            prepare()
        for _ in range(100):
            call()
        torch.cuda.synchronize()
        host, wall = host_and_wall(call, args.calls)
        print(f"\n=== {name}: host {host:.3f} ms until return, wall {wall:.3f} ms to GPU done")
        print(top_functions(call, args.calls))
    loaded.set_runtime(checked)
    print("\n=== kernels and ops of 5 calls, loaded, values checked")
    print(kernels(lambda: loaded(*inputs)))


if __name__ == "__main__":
    main()
