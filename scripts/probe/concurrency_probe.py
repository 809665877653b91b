"""Why concurrent callers of one loaded TensorRT bundle got each other's answers, shown on a GPU.

``python scripts/probe/concurrency_probe.py BUNDLE [--runtime NAME] [--undo FIX]``: 8 threads, each
with its own inputs, call one loaded model 20 times; every output is compared bit for bit with the
single-threaded answer right away and again after all threads finished. ``--undo`` takes one of
the loader's two fixes back to show what it prevents:

* ``unowned``: engines whose outputs leave the call no longer hand out new tensors each call (as
  Torch-TensorRT's runtime rebuilds them from their serialized fields): under pre-allocated outputs
  every call returns the same buffers, which the next call overwrites.
* ``order``: calls are no longer ordered one after another on the GPU, only on the host, so engine
  state reused between calls (CUDA-graph static buffers, intermediate outputs) is raced by callers
  on other streams.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from pipeline import load_bundle
from pipeline.runtime.engines import find_engines
from tests.gpu.test_concurrency import hammer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--undo", choices=["unowned", "order"], action="append", default=[])
    args = parser.parse_args()
    model = load_bundle(args.bundle, runtime=args.runtime)
    if "unowned" in args.undo:
        for ref in find_engines(model.module):
            ref.engine.set_output_tensors_as_unowned(False)
    if "order" in args.undo:

        def unordered(module: Any, inputs: Any, last_call_done: Any) -> Any:
            return module(*inputs)

        model._run_in_call_order = unordered  # type: ignore[method-assign]
    counts = hammer([model])
    print(json.dumps({"bundle": args.bundle, "policy": model.policy.name, "undone": args.undo, **counts}))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
