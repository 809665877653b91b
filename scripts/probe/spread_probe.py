"""Why one bundle runs at different speeds in different processes (GPU host probe, issue 21).

    python scripts/probe/spread_probe.py BUNDLE [--processes 6] [--pin CORE] [--runtime R]

Runs the bundle in fresh processes one after another (with ``--pin``, every other one pinned to
CPU core CORE with ``taskset``) and prints for each:

* ``host_ms``: host time until a call returns, its GPU work still queued (the launch cost);
* ``wall_ms``: a call and a wait for it, as the bench times it;
* ``gpu_ms``: GPU time per call with the launches hidden: 20 calls queued behind a 2 ms GPU sleep,
  CUDA events around the 20 (what ``wall_ms`` would be if the host were infinitely fast; without
  the value-range check, whose read waits for the GPU);
* ``gpu_ms_per_copy``: the same for three copies of the model loaded in that one process (each with
  its own execution memory): if they differ as much as processes do, memory placement is a suspect;
* the SM clock sampled every 0.2 s while the process ran (min / median / max) and the CPU core;
* ``kernels``: the kernels one call runs (torch.profiler over 20 calls): how many launches, a hash
  of their names (equal hashes: the same kernels), GPU time per call summed over them, and the
  five that take longest; after all processes, the kernels whose time differs most between the
  fastest and the slowest process (which kernels a slow process loses its time in);
* the runtime cache's load report (hit or miss): a miss compiles kernels anew in that process.

``--set field=value`` (repeatable) changes one field of the policy the processes load with, e.g.
``--set rtx_cuda_graphs=whole_graph_capture`` or ``--set kernel_specialization=eager``.

If ``gpu_ms`` is flat across processes while ``wall_ms`` spreads, the difference is on the host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from process_spread import sm_clock_mhz  # noqa: E402  (a script beside this one, not a package)

QUEUED_CALLS = 20
SLEEP_CYCLES = 4_000_000  # ~2 ms at ~2 GHz: long enough for QUEUED_CALLS launches to get ahead


def child(bundle: str, runtime: str | None, calls: int, overrides: list[str]) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(REPO))
    from pipeline import load_bundle
    from pipeline.models import make_inputs
    from pipeline.runtime.policy import RuntimeConfig, as_policy

    policy: Any = runtime
    if overrides:
        base = as_policy(runtime) if runtime else load_bundle(bundle).policy
        record = base.to_record() | {k: parsed(v) for k, v in (i.split("=", 1) for i in overrides)}
        policy = RuntimeConfig.from_record(record)
    copies = [load_bundle(bundle, runtime=policy) for _ in range(3)]
    inputs = make_inputs(copies[0].specs, 0, copies[0].precision, copies[0].device)
    model = copies[0]
    warm_until = time.perf_counter() + 1.0
    while time.perf_counter() < warm_until:
        model(*inputs)
        torch.cuda.synchronize()
    host, wall = [], []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(*inputs)
        returned = time.perf_counter()
        torch.cuda.synchronize()
        host.append((returned - start) * 1e3)
        wall.append((time.perf_counter() - start) * 1e3)

    def gpu_ms(copy: Any) -> float:
        samples = []
        for _ in range(15):
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(SLEEP_CYCLES)
            begin.record()
            for _ in range(QUEUED_CALLS):
                copy(*inputs)
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / QUEUED_CALLS)
        return statistics.median(samples)

    for copy in copies:
        # The value-range check waits for the GPU inside every call: queued calls would not queue.
        copy.set_runtime(replace(copy.policy, check_value_ranges=False))
        for _ in range(50):  # warms the other copies too
            copy(*inputs)
    torch.cuda.synchronize()
    per_copy = [round(gpu_ms(copy), 4) for copy in copies]
    cpu = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[36])
    engines = model.load_report.get("engines", {})
    return {
        "policy": model.policy.to_record(),
        "runtime_cache": {k: v for k, v in engines.items() if "cache" in k},
        "kernels": kernel_census(model, inputs),
        "host_ms": round(statistics.median(host), 4),
        "wall_ms": round(statistics.median(wall), 4),
        "gpu_ms": per_copy[0],
        "gpu_ms_per_copy": per_copy,
        "cpu_core": cpu,
        "allowed_cores": len(os.sched_getaffinity(0)),
    }


def parsed(value: str) -> Any:
    """A ``--set`` value: JSON where it parses (true, 3, null), else the string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def kernel_census(model: Any, inputs: Any, calls: int = 20) -> dict[str, Any]:
    """The kernels ``calls`` calls of ``model`` run on the GPU, per call (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            model(*inputs)
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "cuda_time_total", 0.0)
        if device_us and event.key and not event.key.startswith("cuda"):  # kernels and copies
            per_kernel[event.key] = [event.count / calls, device_us / calls]
    names = sorted(per_kernel)
    longest = sorted(per_kernel, key=lambda k: -per_kernel[k][1])[:5]
    return {
        "launches_per_call": round(sum(v[0] for v in per_kernel.values()), 1),
        "distinct": len(names),
        "names_hash": hashlib.sha1("\n".join(names).encode()).hexdigest()[:10],
        "gpu_us_per_call": round(sum(v[1] for v in per_kernel.values()), 1),
        "longest": [[name[:70], round(per_kernel[name][1], 1)] for name in longest],
        "per_kernel_us": {name: round(value[1], 2) for name, value in per_kernel.items()},
    }


def compare_kernels(fast: dict[str, Any], slow: dict[str, Any]) -> list[str]:
    """The kernels whose GPU time per call differs most between two processes' censuses."""
    a, b = fast["kernels"]["per_kernel_us"], slow["kernels"]["per_kernel_us"]
    differences = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0.0) - a.get(k, 0.0)))
    return [
        f"{b.get(k, 0.0) - a.get(k, 0.0):+.1f} us ({a.get(k)} -> {b.get(k)}) {k[:70]}"
        for k in differences[:6]
    ]


class ClockSampler(threading.Thread):
    """Samples the first GPU's SM clock (nvidia-smi) every 0.2 s until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            clock = sm_clock_mhz()
            if clock is not None:
                self.samples.append(clock)
            self.stopped.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--runtime")
    parser.add_argument("--pin", type=int, help="pin every other process to this CPU core")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.bundle, args.runtime, args.calls, args.set)))
        return
    rows = []
    for index in range(args.processes):
        command = [sys.executable, __file__, args.bundle, "--child", "--calls", str(args.calls)]
        command += ["--runtime", args.runtime] if args.runtime else []
        command += [f"--set={item}" for item in args.set]
        pinned = args.pin is not None and index % 2 == 0
        if pinned:
            command = ["taskset", "-c", str(args.pin), *command]
        sampler = ClockSampler()
        sampler.start()
        try:
            answer = subprocess.run(command, check=True, capture_output=True, text=True)
        finally:
            sampler.stopped.set()
            sampler.join()
        row = json.loads(answer.stdout.strip().splitlines()[-1])
        clocks = sampler.samples or [0]
        row.update(
            pinned=pinned, sm_clock_min_median_max=[min(clocks), statistics.median(clocks), max(clocks)]
        )
        rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("kernels", "policy")}
        census = {k: v for k, v in row["kernels"].items() if k != "per_kernel_us"}
        print(f"process {index + 1}: {json.dumps(shown)}\n  kernels {json.dumps(census)}", flush=True)
    print(f"policy: {json.dumps(rows[0]['policy'])}")
    for key in ("host_ms", "wall_ms", "gpu_ms"):
        values = [row[key] for row in rows]
        print(f"{key}: slowest / fastest {max(values) / min(values):.3f}")
    fast, slow = min(rows, key=lambda r: r["gpu_ms"]), max(rows, key=lambda r: r["gpu_ms"])
    print("kernels differing most, fastest -> slowest process by gpu_ms:")
    for line in compare_kernels(fast, slow):
        print(f"  {line}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
