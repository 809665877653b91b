"""One bundle in several fresh processes: how much its latency differs from process to process.

    python scripts/process_spread.py BUNDLE [--processes 5] [--iterations 500] [--json OUT]

Each process runs ``python -m pipeline.bundle bench BUNDLE`` (load with the recorded policy, warm
up, time the loaded model); the medians side by side and slowest / fastest. TensorRT-RTX picks
kernels when an engine's context is created; a runtime cache from the build fixes them, so with
the cache the spread between processes should shrink (README, TensorRT-RTX section).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def sm_clock_mhz() -> int | None:
    """The first GPU's SM clock now, from nvidia-smi (None where it cannot be read)."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return int(answer.stdout.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--runtime", help="runtime preset to load with (default: the recorded one)")
    parser.add_argument(
        "--warmup-seconds", type=float, help="warm-up floor of each process (default: the bench's, 1 s)"
    )
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    medians, device_medians = [], []
    clocks: list[int | None] = []  # the GPU's SM clock as each process started
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.processes):
            report = Path(scratch) / f"{index}.json"
            command = [sys.executable, "-m", "pipeline.bundle", "bench", args.bundle, "--json", str(report)]
            command += ["--iterations", str(args.iterations)]
            command += ["--runtime", args.runtime] if args.runtime else []
            if args.warmup_seconds is not None:
                command += ["--warmup-seconds", str(args.warmup_seconds)]
            clocks.append(sm_clock_mhz())
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            latency = json.loads(report.read_text())["latency"]["loaded"]
            medians.append(float(latency["median_ms"]))
            # The GPU's own time (CUDA events): if it spreads less than the wall-clock median, the
            # host side (launches, waits) differs between processes, not the kernels.
            device = latency.get("device_median_ms")
            device_medians.append(float(device) if device is not None else None)
            shown = f", GPU {device:.3f} ms" if device is not None else ""
            clock = f", SM clock at start {clocks[-1]} MHz" if clocks[-1] is not None else ""
            print(f"process {index + 1}: median {medians[-1]:.3f} ms{shown}{clock}", flush=True)
    result = {
        "bundle": args.bundle,
        "medians_ms": medians,
        "device_medians_ms": device_medians,
        "sm_clock_mhz_at_start": clocks,
        "slowest_over_fastest": round(max(medians) / min(medians), 3),
    }
    if all(value is not None for value in device_medians):
        on_device = [float(value) for value in device_medians if value is not None]
        result["device_slowest_over_fastest"] = round(max(on_device) / min(on_device), 3)
    print(f"slowest / fastest median: {result['slowest_over_fastest']:.3f} over {args.processes} processes")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
