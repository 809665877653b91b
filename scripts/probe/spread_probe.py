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
* the SM clock sampled every 0.2 s while the process ran (min / median / max) and the CPU core.

If ``gpu_ms`` is flat across processes while ``wall_ms`` spreads, the difference is on the host.
"""

from __future__ import annotations

import argparse
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


def child(bundle: str, runtime: str | None, calls: int) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(REPO))
    from pipeline import load_bundle
    from pipeline.models import make_inputs

    copies = [load_bundle(bundle, runtime=runtime) for _ in range(3)]
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
    return {
        "host_ms": round(statistics.median(host), 4),
        "wall_ms": round(statistics.median(wall), 4),
        "gpu_ms": per_copy[0],
        "gpu_ms_per_copy": per_copy,
        "cpu_core": cpu,
        "allowed_cores": len(os.sched_getaffinity(0)),
    }


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
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.bundle, args.runtime, args.calls)))
        return
    rows = []
    for index in range(args.processes):
        command = [sys.executable, __file__, args.bundle, "--child", "--calls", str(args.calls)]
        command += ["--runtime", args.runtime] if args.runtime else []
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
        print(f"process {index + 1}: {json.dumps(row)}", flush=True)
    for key in ("host_ms", "wall_ms", "gpu_ms"):
        values = [row[key] for row in rows]
        print(f"{key}: slowest / fastest {max(values) / min(values):.3f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
