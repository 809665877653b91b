"""Refit vs full rebuild, side by side in one process (GPU host).

    python scripts/refit_bench.py [--model bert] [--precision fp16] [--json OUT.json]

Builds the model with refittable engines (``compile.immutable_weights=false``, ``force=true`` so
every stage runs), then refits that bundle with other weights (seeded random), twice. Prints each
step's time and the ratio of the refit to the rebuild, end to end and for the engine work alone
(compile + serialize vs refit, which includes exporting the new weights and saving the engines).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

from pipeline.config import compose, resolve
from pipeline.console import console, summary_table
from pipeline.refit import refit_bundle
from pipeline.runner import run_pipeline
from pipeline.stages.build import instantiate_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="bert")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--runtime", default="preallocated")
    parser.add_argument("--refits", type=int, default=2)
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="refit-bench-"))

    import torch_tensorrt  # noqa: F401 - import and CUDA start-up are not part of either figure

    torch.cuda.init()
    overrides = [
        f"model={args.model}",
        f"precision={args.precision}",
        f"runtime={args.runtime}",
        "backend=tensorrt",
        "compile.immutable_weights=false",
        f"artifacts_dir={artifacts}",
        "force=true",
    ]
    start = time.perf_counter()
    rebuild = run_pipeline(resolve(compose(overrides)), overrides)
    rebuild_total = time.perf_counter() - start
    assert rebuild.bundle is not None

    new_model = instantiate_model(resolve(compose([f"model={args.model}", "model.weights.seed=1"])).model)
    weights = artifacts / "new-weights.safetensors"
    save_file(new_model.state_dict(), str(weights))
    del new_model

    refits = []
    for _ in range(args.refits):
        start = time.perf_counter()
        result = refit_bundle(rebuild.bundle.path, weights, artifacts_dir=artifacts, force=True)
        refits.append({"total": time.perf_counter() - start, **result.seconds})

    rebuild_engine = rebuild.seconds["compile"] + rebuild.seconds["serialize"]
    refit_total = statistics.median(r["total"] for r in refits)
    refit_engine = statistics.median(r["refit"] for r in refits)
    report = {
        "model": args.model,
        "precision": args.precision,
        "gpu": torch.cuda.get_device_name(),
        "rebuild": {"total": rebuild_total, **rebuild.seconds},
        "refits": refits,
        "ratio_total": refit_total / rebuild_total,
        "ratio_engine_work": refit_engine / rebuild_engine,
    }
    rows = [(f"rebuild {k} (s)", f"{v:.2f}") for k, v in report["rebuild"].items()]  # type: ignore[attr-defined]
    for index, refit in enumerate(refits):
        rows += [(f"refit #{index + 1} {k} (s)", f"{v:.2f}") for k, v in refit.items()]
    rows.append(("refit / rebuild, end to end", f"{report['ratio_total']:.3f}"))
    rows.append(("refit / (compile + serialize)", f"{report['ratio_engine_work']:.3f}"))
    console.print(summary_table(rows, title=f"refit vs rebuild: {args.model} {args.precision}"))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
