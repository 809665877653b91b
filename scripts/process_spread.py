"""One bundle in several fresh processes: how much its latency differs from process to process.

    python scripts/process_spread.py BUNDLE [--processes 5] [--iterations 500] [--json OUT]
    python scripts/process_spread.py BUNDLE --interleaved [--processes 5] [--rounds 10] [--json OUT]

Sequential (the default): each process runs ``python -m pipeline.bundle bench BUNDLE`` (load with
the recorded policy, warm up, time the loaded model), one after another; the medians side by side
and slowest / fastest. TensorRT-RTX picks kernels when an engine's context is created; a runtime
cache from the build fixes them, so with the cache the spread between processes should shrink
(docs/performance.md, process-to-process spread).

``--interleaved``: the processes are alive at once and take turns (one at a time on the GPU, the
order rotated every round), each timing ``--iterations / --rounds`` calls per turn as the bench
does. A host that gets slower or faster over the minutes of a sequential run (a virtual machine's
neighbours) then slows every process alike: what is left between the medians belongs to the
processes themselves. Each round's median over all processes is printed too: that is the drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


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


def worker(bundle: str, runtime: str | None, warmup_s: float) -> None:
    """A process that loads the bundle, then times ``run N`` turns read from stdin (one JSON line
    answered per turn: median host and GPU ms of its N calls)."""
    from pipeline import load_bundle
    from pipeline.models import make_inputs
    from pipeline.timing import compare_latency

    model = load_bundle(bundle, runtime=runtime)
    inputs = make_inputs(model.specs, 0, model.precision, model.device)
    warm = True
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] != "run":
            break
        latency = compare_latency(
            {"loaded": lambda: model(*inputs)},
            warmup=5,
            iterations=int(command[1]),
            rounds=1,
            warmup_s=warmup_s if warm else 0.0,
        )["loaded"]
        warm = False
        print(
            json.dumps({"median_ms": latency.median_ms, "device_median_ms": latency.device_median_ms}),
            flush=True,
        )
    model.close()


def interleaved(args: argparse.Namespace) -> dict[str, Any]:
    """Time the processes in turns (see the module docstring); the result as for sequential runs."""
    command = [sys.executable, __file__, args.bundle, "--worker"]
    command += ["--runtime", args.runtime] if args.runtime else []
    command += ["--warmup-seconds", str(1.0 if args.warmup_seconds is None else args.warmup_seconds)]
    workers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(args.processes)
    ]
    per_turn = max(1, args.iterations // args.rounds)

    def turn(process: subprocess.Popen[str], calls: int) -> dict[str, float]:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"run {calls}\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"a worker exited (rc {process.wait()})")
        answer: dict[str, float] = json.loads(line)
        return answer

    try:
        for process in workers:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise SystemExit(f"a worker failed to load the bundle (rc {process.wait()})")
        for process in workers:  # warm-up turns: the bench's floor, one process at a time
            turn(process, per_turn)
        host: list[list[float]] = [[] for _ in workers]
        device: list[list[float | None]] = [[] for _ in workers]
        drift = []
        for round_index in range(args.rounds):
            order = workers[round_index % len(workers) :] + workers[: round_index % len(workers)]
            this_round = []
            for process in order:
                answer = turn(process, per_turn)
                index = workers.index(process)
                host[index].append(answer["median_ms"])
                device[index].append(answer["device_median_ms"])
                this_round.append(answer["median_ms"])
            drift.append(round(statistics.median(this_round), 4))
    finally:
        for process in workers:
            if process.stdin is not None:
                process.stdin.close()
        for process in workers:
            process.wait(timeout=60)
    medians = [round(statistics.median(samples), 4) for samples in host]
    # No GPU time on a CPU-only host (the script still runs there).
    device_medians = [round(statistics.median(s), 4) if None not in s else None for s in device]
    for index, (median, on_device) in enumerate(zip(medians, device_medians, strict=True)):
        shown = f", GPU {on_device:.3f} ms" if on_device is not None else ""
        print(f"process {index + 1}: median {median:.3f} ms{shown}", flush=True)
    print(f"median over all processes, round by round (drift): {drift}")
    on_gpu = [value for value in device_medians if value is not None]
    return {
        "bundle": args.bundle,
        "mode": "interleaved",
        "rounds": args.rounds,
        "calls_per_turn": per_turn,
        "medians_ms": medians,
        "device_medians_ms": device_medians,
        "round_medians_ms": drift,
        "slowest_over_fastest": round(max(medians) / min(medians), 3),
        "device_slowest_over_fastest": round(max(on_gpu) / min(on_gpu), 3) if on_gpu else None,
    }


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
    parser.add_argument("--interleaved", action="store_true", help="processes alive at once, in turns")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved: turns per process")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.bundle, args.runtime, args.warmup_seconds or 0.0)
        return
    if args.interleaved:
        result = interleaved(args)
        print(
            f"slowest / fastest median: {result['slowest_over_fastest']:.3f} over {args.processes} processes"
        )
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(result, indent=2))
        return
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
