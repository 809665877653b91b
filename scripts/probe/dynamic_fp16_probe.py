"""Where a dynamic-shape BERT fp16 engine's error comes from (issue 33), and what it is now.

``bert_dynamic`` fp16 without an attention mask failed its own verification (max_abs 0.095 on
the pooled output vs 0.03 allowed); a hand-made Torch-TensorRT compile with a mask input was as
exact as eager fp16. At each shape this compares, against eager fp32 (the model's function) and
eager fp16 (what the verify stage compares with):

- ``pipeline``: the pipeline's compile of ``model=bert_dynamic precision=fp16`` (its config now
  carries ``attention_mask``; golden-style padded rows), in process and reloaded as a bundle is
  (the own TensorRT-RTX runner, as on the GPU host);
- ``no-mask``: the same BERT compiled without the mask input (the config before), where the
  engine's error was ~15x eager fp16's.

    python3 scripts/probe/dynamic_fp16_probe.py [--json OUT.json] [--variants pipeline,no-mask]

On the GPU host only (needs torch_tensorrt). Each line: variant, shape, output, max_abs vs fp32,
vs eager fp16 and what verify allows there, and eager fp16's own max_abs vs fp32.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import compose, resolve
from pipeline.models import make_inputs
from pipeline.models.adapter import flatten_outputs
from pipeline.runtime.types import Precision
from pipeline.stages.build import build_model

SHAPES = {"1x16": (1, 16), "1x128": (1, 128), "3x77": (3, 77), "17x265": (17, 265), "32x512": (32, 512)}
CUDA = torch.device("cuda")
Runner = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def pipeline_runners(config: Any, built: Any) -> dict[str, Runner]:
    from pipeline.backends.tensorrt import TensorRTBackend
    from pipeline.runtime.base import DirectoryFiles
    from pipeline.runtime.policy import RuntimeConfig

    backend = TensorRTBackend()
    start = time.perf_counter()
    compiled = backend.compile(built.eager, built.trace_inputs, config)
    print(f"pipeline compile {time.perf_counter() - start:.1f}s, {compiled.engine_count} engines", flush=True)
    root = Path(tempfile.mkdtemp(prefix="probe-"))
    artifact = backend.save(compiled, root, config.model.inputs)
    loaded = backend.load(artifact, DirectoryFiles(root), CUDA, RuntimeConfig())
    loaded.executor.configure(RuntimeConfig())
    reloaded = loaded.module
    print(f"reloaded: {loaded.executor.outcome().record()}", flush=True)
    return {
        "pipeline": lambda inputs: tuple(compiled.module(*inputs)),
        "pipeline-reloaded": lambda inputs: tuple(reloaded(*inputs)),
    }


def no_mask_runners(built: Any) -> dict[str, Runner]:
    import torch_tensorrt

    model = built.eager.model
    batch, seq = torch.export.Dim("batch", min=1, max=32), torch.export.Dim("seq", min=16, max=512)
    ids = torch.randint(0, 30522, (2, 128), dtype=torch.int32, device=CUDA)
    kwargs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids)}
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(
            model, (), kwargs, dynamic_shapes={n: {0: batch, 1: seq} for n in kwargs}
        )
        module = torch_tensorrt.dynamo.compile(program, arg_inputs=(), kwarg_inputs=kwargs)
    print(f"no-mask compile {time.perf_counter() - start:.1f}s", flush=True)
    return {"no-mask": lambda inputs: flatten_outputs(module(input_ids=inputs[0], token_type_ids=inputs[2]))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--variants", default="pipeline,no-mask")
    args = parser.parse_args()
    wanted = set(args.variants.split(","))
    config = resolve(compose(["model=bert_dynamic", "precision=fp16", "backend=tensorrt"]))
    b16 = build_model(config, CUDA)
    b32 = build_model(resolve(compose(["model=bert_dynamic", "precision=fp32"])), CUDA)
    tolerance = config.verify.tolerance(config.precision)
    specs = config.model.inputs
    sets = {
        label: make_inputs(specs, 1234, Precision.fp16, CUDA, {"batch": b, "seq": s})
        for label, (b, s) in SHAPES.items()
    }
    results: list[dict[str, Any]] = []
    makers: dict[str, Callable[[], dict[str, Runner]]] = {
        "pipeline": lambda: pipeline_runners(config, b16),
        "no-mask": lambda: no_mask_runners(b16),
    }
    for step, make in makers.items():
        if step not in wanted:
            continue
        try:
            runners = make()
            for name, run in runners.items():
                for label, inputs in sets.items():
                    with torch.inference_mode():
                        if name == "no-mask":  # the model as it was: no mask, so no padding either
                            inputs = (inputs[0], torch.ones_like(inputs[1]), inputs[2])
                        e32, e16, got = b32.eager(*inputs), b16.eager(*inputs), run(inputs)
                        torch.cuda.synchronize()
                    for index, (g, h, f) in enumerate(zip(got, e16, e32, strict=True)):
                        allowed = tolerance.atol + tolerance.rtol * float(h.abs().max())
                        row = {
                            "variant": name,
                            "shape": label,
                            "output": index,
                            "vs_fp32": max_abs(g, f),
                            "vs_fp16": max_abs(g, h),
                            "allowed": allowed,
                            "fp16_vs_fp32": max_abs(h, f),
                        }
                        results.append(row)
                        print(
                            f"{name:>17} {label:>7} out{index} vs32 {row['vs_fp32']:.4f} "
                            f"vs16 {row['vs_fp16']:.4f} (allowed {allowed:.4f}) "
                            f"eager16-vs32 {row['fp16_vs_fp32']:.4f}",
                            flush=True,
                        )
        except Exception:
            print(f"{step} FAILED:\n{traceback.format_exc()}", flush=True)
            results.append({"variant": step, "error": traceback.format_exc()})
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
