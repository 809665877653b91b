"""Refit on a real GPU: a BERT bundle takes new weights into its engines without a rebuild.

The parent is a BERT fp16 under the pre-allocated-outputs policy, compiled with
``immutable_weights=false``: ``tiny_bert`` by default (the same architecture and refit path as
BERT-base at a fraction of the suite's time; ``GPU_REFIT_MODEL=bert`` for the full size). It is
refitted with other weights; the new bundle must match eager PyTorch with those weights (and not
the old outputs), and a fresh process must find the policy on its engines. Refitting back to the
parent's weights must reproduce the parent's outputs. What the refit and the rebuild cost goes
to ``GPU_REPORT``; ``scripts/refit_bench.py`` (``make bench-refit``, BERT-base) is the benchmark.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline import load_bundle
from pipeline.config import compose, resolve
from pipeline.refit import RefitResult, refit_bundle
from pipeline.runner import RunResult
from pipeline.runtime.format import GOLDEN_NAME
from pipeline.runtime.verification import compare
from pipeline.stages.build import instantiate_model, prepare_model
from tests.gpu.probe import probe_in_fresh_process
from tests.helpers import run

REFIT_MODEL = os.environ.get("GPU_REFIT_MODEL", "tiny_bert")
PARENT = (f"model={REFIT_MODEL}", "precision=fp16", "runtime=preallocated", "compile.immutable_weights=false")


@dataclass
class RefitCase:
    artifacts: Path
    parent: RunResult
    refit: RefitResult
    new_weights_seed: int = 1


def save_weights(path: Path, seed: int) -> Path:
    model = instantiate_model(resolve(compose([f"model={REFIT_MODEL}", f"model.weights.seed={seed}"])).model)
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> RefitCase:
    artifacts = tmp_path_factory.mktemp("refit")
    parent = run(artifacts, *PARENT, "backend=tensorrt")
    assert parent.bundle is not None
    weights = save_weights(artifacts / "seed1.safetensors", seed=1)
    refit = refit_bundle(parent.bundle.path, weights, artifacts_dir=artifacts)
    if os.environ.get("GPU_REPORT"):
        report_path = Path(os.environ["GPU_REPORT"]).with_name("refit-report.json")
        report_path.write_text(
            json.dumps({"rebuild_seconds": parent.seconds, "refit_seconds": refit.seconds}, indent=2)
        )
    return RefitCase(artifacts, parent, refit)


def test_refitted_bert_matches_eager_with_new_weights_and_not_old_when_loaded(case: RefitCase) -> None:
    assert case.refit.engines_refitted == case.parent.bundle.manifest.engine_count == 1  # type: ignore[union-attr]
    config = resolve(
        compose([f"model={REFIT_MODEL}", "precision=fp16", f"model.weights.seed={case.new_weights_seed}"])
    )
    eager = prepare_model(instantiate_model(config.model), config, torch.device("cuda"))
    loaded = load_bundle(case.refit.bundle.path)
    with torch.inference_mode():
        expected = tuple(t.cpu() for t in eager.eager(*eager.golden_inputs))
        refitted = loaded(*eager.golden_inputs)
    tolerance = config.verify.tolerance(config.precision)
    assert all(c.passed for c in compare("new weights", refitted, expected, tolerance))

    old = load_file(str(case.parent.bundle.path / GOLDEN_NAME))  # type: ignore[union-attr]
    old_outputs = [old[f"output.{i}"] for i in range(len(refitted))]
    assert not any(c.passed for c in compare("old weights", refitted, old_outputs, tolerance))


def test_refitted_bundle_keeps_parent_policy_on_every_engine_when_loaded_in_fresh_process(
    case: RefitCase,
) -> None:
    report = probe_in_fresh_process(case.refit.bundle.path)
    assert report["policy"] == "preallocated"
    assert report["engines_configured"] == report["engines_in_manifest"] == 1
    assert all(state["pre_allocated_outputs"] is True for state in report["engines"].values())
    assert report["golden"].startswith("PASS"), report["golden"]
    manifest = case.refit.bundle.manifest
    assert manifest.weights["refit_from"]["bundle_id"] == case.parent.bundle.manifest.bundle_id  # type: ignore[union-attr]
    assert manifest.runtime["applied"] and manifest.runtime["engines_configured"] == 1


def test_refitted_bundle_refits_back_to_parent_outputs_when_given_parent_weights(case: RefitCase) -> None:
    weights = save_weights(case.artifacts / "seed0.safetensors", seed=0)
    back = refit_bundle(case.refit.bundle.path, weights, artifacts_dir=case.artifacts)
    assert back.bundle.manifest.weights["sha256"] == case.parent.bundle.manifest.weights["sha256"]  # type: ignore[union-attr]
    parent = load_file(str(case.parent.bundle.path / GOLDEN_NAME))  # type: ignore[union-attr]
    loaded = load_bundle(back.bundle.path)
    inputs = tuple(parent[f"input.{spec.name}"].cuda() for spec in loaded.specs)
    outputs = loaded(*inputs)
    tolerance = resolve(compose(list(PARENT))).verify.fp16
    references = [parent[f"output.{i}"] for i in range(len(outputs))]
    assert all(c.passed for c in compare("parent", outputs, references, tolerance))
