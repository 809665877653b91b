"""Errors of a ``bert_dynamic`` fp16 bundle at each golden shape against eager fp32 (the model's
function) and eager fp16: tells an engine's own error from the fp16 reference's.

    python3 scripts/probe/fp16_range_probe.py BUNDLE      # on the GPU host

Each line: shape, output, ``max_abs/cosine`` of engine vs fp32, eager fp16 vs fp32, engine vs fp16.
"""

from __future__ import annotations

import sys

import torch

from pipeline import load_bundle
from pipeline.config import compose, resolve
from pipeline.stages.build import build_model

bundle = sys.argv[1]
cuda = torch.device("cuda")
b16 = build_model(resolve(compose(["model=bert_dynamic", "precision=fp16"])), cuda)
b32 = build_model(resolve(compose(["model=bert_dynamic", "precision=fp32"])), cuda)
loaded = load_bundle(bundle)


def err(a: torch.Tensor, b: torch.Tensor) -> str:
    a, b = a.double().flatten().cpu(), b.double().flatten().cpu()
    return f"{float((a - b).abs().max()):.4f}/{float(torch.nn.functional.cosine_similarity(a, b, dim=0)):.5f}"


with torch.inference_mode():
    for name, inputs in b16.golden_input_sets().items():
        trt, e16, e32 = loaded(*inputs), b16.eager(*inputs), b32.eager(*inputs)
        for i, (t, h, f) in enumerate(zip(trt, e16, e32, strict=True)):
            print(
                f"{name:>4} {tuple(inputs[0].shape)} out{i} max|fp32|={float(f.abs().max()):.3f} "
                f"trt-vs-fp32 {err(t, f)} eager16-vs-fp32 {err(h, f)} trt-vs-eager16 {err(t, h)}"
            )
