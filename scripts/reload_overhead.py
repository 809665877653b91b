"""Where a reloaded Torch-TensorRT module spends its time per call, side by side.

    python scripts/reload_overhead.py BUNDLE [--json OUT]

Times the same engines, under the bundle's policy, side by side: through ``load_bundle``'s model
(its lock, input checks, own stream and grad-mode rule around the graph) with and without the
integer value-range check (one device-to-host read per call), the loaded graph alone, and the
engine op alone (``torch.ops.tensorrt.execute_engine``), the floor for Python-side overhead.
Where the bundle loads on the own TensorRT-RTX runner (pipeline.runtime.rtx_runner), the same
bundle is loaded a second time on Torch-TensorRT's C++ runtime (``runtime_cache=off``) and its
loaded model and bare engine op are timed in the same rounds, so the runner is compared with the
op it replaces.
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
from pipeline.runtime.policy import RuntimeCacheMode
from pipeline.timing import compare_latency


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundle")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--runtime", help="a policy preset to load with instead of the recorded one")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    loaded = load_bundle(args.bundle, runtime=args.runtime)
    policy = loaded.policy
    inputs = make_inputs(loaded.specs, 0, loaded.precision, loaded.device)
    context = loaded.executor.call_context()
    # What the loaded graph runs besides its engines (each costs a dispatch per call).
    print(f"graph ops per call: {graph_ops(loaded.module)}")

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
    engines = find_engines(loaded.module)  # Torch-TensorRT's engine objects (the C++ runtime's)
    if len(engines) == 1:
        engine = engines[0].engine
        calls["execute_engine op alone"] = lambda: under_policy_op(engine, inputs, context)
    runner = loaded.load_report.get("engines", {}).get("runner", "")
    print(f"engines run on: {runner}")
    runners = list(loaded.executor.engine_objects().values()) if not engines else []
    if len(runners) == 1:
        runner_engine = runners[0]
        calls["own runner alone"] = lambda: runner_engine.execute(list(inputs))
    if not engines:  # the own runner: the C++ runtime's model and op beside it
        cpp = load_bundle(args.bundle, runtime=replace(policy, runtime_cache=RuntimeCacheMode.off))
        cpp_context = cpp.executor.call_context()
        cpp_engines = find_engines(cpp.module)
        unchecked_cpp = replace(cpp.policy, check_value_ranges=False)
        calls["C++ runtime: loaded model, value ranges not checked"] = lambda: cpp(*inputs)
        prepare["C++ runtime: loaded model, value ranges not checked"] = lambda: cpp.set_runtime(
            unchecked_cpp
        )
        if len(cpp_engines) == 1:
            cpp_engine = cpp_engines[0].engine
            calls["C++ runtime: execute_engine op alone"] = lambda: under_policy_op(
                cpp_engine, inputs, cpp_context
            )
    latency = compare_latency(calls, warmup=50, iterations=args.iterations, rounds=5, prepare=prepare)
    rows = {name: asdict(value) for name, value in latency.items()}
    for name, value in latency.items():
        device = value.device_median_ms
        print(f"{name:52s} median {value.median_ms:.3f} ms  p90 {value.p90_ms:.3f}  device {device}")
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps({"policy": policy.name, "runner": runner, "latency": rows}, indent=2)
        )


def graph_ops(module: torch.nn.Module) -> dict[str, int]:
    """How many times each function the module's FX graphs call appears in them (name: count)."""
    counts: dict[str, int] = {}
    for submodule in module.modules():
        graph = getattr(submodule, "graph", None)
        for node in getattr(graph, "nodes", ()):
            if node.op in ("call_function", "call_method", "call_module"):
                name = getattr(node.target, "__name__", str(node.target))
                counts[name] = counts.get(name, 0) + 1
    return counts


def under_policy_op(engine: object, inputs: tuple[torch.Tensor, ...], context: object) -> object:
    with context, torch.inference_mode(False), torch.no_grad():  # type: ignore[attr-defined]
        return torch.ops.tensorrt.execute_engine(list(inputs), engine)


if __name__ == "__main__":
    main()
