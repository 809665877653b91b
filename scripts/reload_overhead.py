"""Where a reloaded Torch-TensorRT module spends its time per call, side by side.

    python scripts/reload_overhead.py BUNDLE [--json OUT]

Times the same engines, under the bundle's policy, side by side: through ``load_bundle``'s model
(its lock, input checks, own stream and grad-mode rule around the graph) with and without the
integer value-range check (one device-to-host read per call), the loaded graph alone, and the
engine op alone (``torch.ops.tensorrt.execute_engine``), the floor for Python-side overhead.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

from pipeline import load_bundle
from pipeline.models import make_inputs
from pipeline.runtime.engines import find_engines
from pipeline.timing import compare_latency


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    loaded = load_bundle(args.bundle)
    policy = loaded.policy
    inputs = make_inputs(loaded.specs, 0, loaded.precision, loaded.device)
    context = loaded.backend.call_context(policy)

    def under_policy(module: torch.nn.Module) -> object:
        # The loaded model's grad-mode rule (compare_latency times inside inference mode).
        with context, torch.inference_mode(False), torch.no_grad():
            return module(*inputs)

    checked, unchecked = replace(policy, check_value_ranges=True), replace(policy, check_value_ranges=False)
    calls = {
        "loaded model, value ranges checked": lambda: loaded(*inputs),
        "loaded model, value ranges not checked": lambda: loaded(*inputs),
        "loaded graph alone": lambda: under_policy(loaded.module),
    }
    prepare = {
        "loaded model, value ranges checked": lambda: loaded.set_runtime(checked),
        "loaded model, value ranges not checked": lambda: loaded.set_runtime(unchecked),
    }
    engines = find_engines(loaded.module)
    if len(engines) == 1:
        engine = engines[0].engine
        calls["execute_engine op alone"] = lambda: under_policy_op(engine, inputs, context)
    latency = compare_latency(calls, warmup=50, iterations=args.iterations, rounds=5, prepare=prepare)
    rows = {name: asdict(value) for name, value in latency.items()}
    for name, value in latency.items():
        device = value.device_median_ms
        print(f"{name:45s} median {value.median_ms:.3f} ms  p90 {value.p90_ms:.3f}  device {device}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"policy": policy.name, "latency": rows}, indent=2))


def under_policy_op(engine: object, inputs: tuple[torch.Tensor, ...], context: object) -> object:
    with context, torch.inference_mode(False), torch.no_grad():  # type: ignore[attr-defined]
        return torch.ops.tensorrt.execute_engine(list(inputs), engine)


if __name__ == "__main__":
    main()
