"""A BERT fp16 bundle with a dynamic batch and sequence, pre-allocated outputs, on a real GPU.

The bundle verifies at the default fp16 tolerance, on golden sets whose rows are padded (the
``attention_mask`` input). Pre-allocated output buffers are reused while input shapes stay the
same; this proves that a ``preallocated`` bundle gives correct outputs when consecutive calls
change the batch (1, 7, 32, 7, 1), in a fresh process that loads the shipped archive, with the
policy on every engine. The same process times one shape against alternating shapes: what a
change of shape costs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline import load_bundle
from pipeline.bundle.pack import pack_bundle
from pipeline.config.schema import Tolerance
from pipeline.models import make_inputs
from pipeline.runner import RunResult
from pipeline.runtime.format import GOLDEN_NAME, OPT_SET, golden_sets, golden_tensors
from pipeline.stages.build import build_model
from tests.gpu.probe import HEAVY_MODULES, probe_many_in_fresh_process
from tests.gpu.test_concurrency import THREADS, answers, hammer
from tests.gpu.test_tensorrt_bundles import REPORT
from tests.helpers import config_for, run

BATCHES = {OPT_SET: 1, "b7": 7, "b32": 32}
#: Where the per-shape errors go in the GPU report (the run's summary prints them).
ACCURACY = "bert_dynamic-fp16-accuracy"
ORDER = [OPT_SET, "b7", "b32", "b7", OPT_SET]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-dynamic")


def test_preallocated_dynamic_batch_bert_matches_eager_when_batch_changes_between_calls_in_fresh_process(
    artifacts: Path,
) -> None:
    result = run(
        artifacts,
        "model=bert_dynamic",
        "precision=fp16",
        "runtime=preallocated",
        "backend=tensorrt",
    )  # the default fp16 tolerance: verify.fp16 in conf/verify/default.yaml
    assert result.bundle is not None and result.verified is not None
    assert result.verified.report.passed, result.verified.report.summary()
    checked = {c.input_set for c in result.verified.report.comparisons}
    assert {"golden", "golden-min", "golden-max", "golden-odd"} <= checked
    golden = load_file(str(result.bundle.path / GOLDEN_NAME))
    lengths = golden["max/input.attention_mask"].sum(dim=1)
    assert int(lengths.min()) < 512 == int(lengths.max())  # padded rows in the batch of 32
    REPORT[ACCURACY] = accuracy_by_set(result, artifacts)

    config = result.config
    eager = build_model(config, torch.device("cuda")).eager
    sets = {}
    with torch.inference_mode():
        for name, batch in BATCHES.items():
            inputs = make_inputs(config.model.inputs, 100 + batch, config.precision, "cuda", {"batch": batch})
            sets[name] = (inputs, tuple(t.cpu() for t in eager(*inputs)))
    del eager
    torch.cuda.empty_cache()
    sequence = artifacts / "batches.safetensors"
    save_file(golden_tensors([s.name for s in config.model.inputs], sets), str(sequence))

    shipped = artifacts / "shipped"
    shipped.mkdir()
    archive = Path(shutil.move(pack_bundle(result.bundle.path), shipped / f"{result.bundle.path.name}.tar"))
    (report,) = probe_many_in_fresh_process(
        [archive], cwd=shipped, extra=["--sequence", str(sequence), "--order", ",".join(ORDER)]
    )
    REPORT["bert_dynamic-fp16-preallocated"] = report

    assert report["imported"] == dict.fromkeys(HEAVY_MODULES, False)
    assert report["golden_passed"], report["golden"]
    assert {"golden", "golden-min", "golden-max", "golden-odd"} <= set(report["golden_sets"])
    run_ = report["sequence"]
    assert [call["set"] for call in run_["calls"]] == ORDER
    assert [call["shape"][0] for call in run_["calls"]] == [BATCHES[name] for name in ORDER]
    assert all(call["passed"] for call in run_["calls"]), run_["calls"]
    assert run_["policy"] == "preallocated"
    assert run_["engines"] and all(state["pre_allocated_outputs"] for state in run_["engines"].values())

    # Threads calling with different batches at once: every call changes the shape the engine
    # last ran, and each caller still gets the answer to its own inputs. TensorRT-RTX specializes
    # kernels for a new shape lazily (in the background), so one input can give bit-different
    # (equally right) outputs from one call to the next even on one thread: answers are held to
    # the bundle's tolerance, and single-threaded answers before and after the threads are
    # compared bit for bit to show that drift without any thread.
    with load_bundle(archive) as model:
        batches = list(BATCHES.values())
        inputs = [
            make_inputs(model.specs, 2000 + i, model.precision, model.device, {"batch": batches[i % 3]})
            for i in range(THREADS)
        ]
        tolerance = Tolerance(**model.manifest.verification["tolerance"])
        before = answers(model, inputs)
        counts = hammer([model], given={id(model): inputs}, tolerance=tolerance, expected={id(model): before})
        after = answers(model, inputs)
        counts["single-threaded before vs after: bit-different"] = sum(
            not all(torch.equal(a, b) for a, b in zip(x, y, strict=True))
            for x, y in zip(before, after, strict=True)
        )
    REPORT["threads-bert_dynamic-batches-1-7-32"] = dict(counts)
    wrong = {key: n for key, n in counts.items() if "another" in key or "neither" in key}
    assert wrong == {}, counts


def accuracy_by_set(result: RunResult, artifacts: Path) -> dict[str, dict[str, float]]:
    """Per golden set and output: the bundle's max_abs error against eager fp16 (what verify
    checks) and what verify allowed, beside eager fp16's own max_abs error against eager fp32."""
    assert result.bundle is not None and result.verified is not None
    names = [spec.name for spec in result.config.model.inputs]
    sets = golden_sets(
        load_file(str(result.bundle.path / GOLDEN_NAME)), names, len(result.bundle.manifest.outputs)
    )
    device = torch.device(result.device)
    fp32 = build_model(
        config_for(artifacts, f"model={result.config.model.name}", "precision=fp32"), device
    ).eager
    checks = {(c.input_set, c.output): c for c in result.verified.report.comparisons}
    rows: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, (inputs, reference) in sets.items():
            label = "golden" if name == OPT_SET else f"golden-{name}"
            outputs = fp32(*(tensor.to(device) for tensor in inputs))
            for index, (half, full) in enumerate(zip(reference, outputs, strict=True)):
                check = checks[(label, index)]
                rows[f"{label} {tuple(inputs[0].shape)} output {index}"] = {
                    "bundle_vs_eager_fp16": check.max_abs_error,
                    "allowed": check.allowed_abs_error,
                    "eager_fp16_vs_fp32": float((half.double() - full.double().cpu()).abs().max()),
                }
    del fp32
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows
