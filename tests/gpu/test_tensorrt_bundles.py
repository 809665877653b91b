"""TensorRT bundles on a real GPU: the runtime policy survives save and reload on every engine.

For each model and runtime policy: compile -> bundle -> load in a fresh process -> read the
policy back from the engine objects -> golden outputs within tolerance. Cases come from
``GPU_TEST_CASES`` (default ``bert:fp16,resnet50:fp32``); what the fresh processes saw goes to
``GPU_REPORT`` (JSON) when that is set. Latency comparisons are ``make bench``'s job, not these tests'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline import LoadedBundle, load_bundle
from pipeline.backends.engines import find_engines
from pipeline.config.presets import runtime_preset
from pipeline.errors import InputValidationError
from pipeline.models import make_inputs
from pipeline.runner import RunResult
from pipeline.timing import gpu_memory_in_use
from tests.gpu.probe import probe_in_fresh_process
from tests.helpers import run

RUNTIMES = ["standard", "preallocated", "dynamic", "cudagraphs"]
MODELS = [
    tuple(case.split(":")) for case in os.environ.get("GPU_TEST_CASES", "bert:fp16,resnet50:fp32").split(",")
]
CASES = [(model, precision, runtime) for model, precision in MODELS for runtime in RUNTIMES]
REPORT: dict[str, dict[str, Any]] = {}
PROBES: dict[Path, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-artifacts")


@pytest.fixture(scope="module")
def bundles(artifacts: Path) -> dict[tuple[str, str, str], RunResult]:
    return {}


def build(
    bundles: dict[tuple[str, str, str], RunResult], artifacts: Path, case: tuple[str, str, str]
) -> RunResult:
    if case not in bundles:
        model, precision, runtime = case
        result = run(
            artifacts, f"model={model}", f"precision={precision}", f"runtime={runtime}", "backend=tensorrt"
        )
        assert result.bundle is not None and result.compiled is not None
        bundles[case] = result
    return bundles[case]


def probe(bundle: Path) -> dict[str, Any]:
    """What a fresh process sees of ``bundle`` (probed once per bundle)."""
    if bundle not in PROBES:
        PROBES[bundle] = probe_in_fresh_process(bundle)
    return PROBES[bundle]


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_tensorrt_bundle_restores_policy_on_every_engine_when_loaded_in_fresh_process(
    case: tuple[str, str, str], bundles: dict[tuple[str, str, str], RunResult], artifacts: Path
) -> None:
    result = build(bundles, artifacts, case)
    assert result.bundle is not None
    policy = runtime_preset(case[2])
    report = dict(probe(result.bundle.path))

    assert report["engines_configured"] == report["engines_in_manifest"] > 0
    for path, state in report["engines"].items():
        assert state["pre_allocated_outputs"] is policy.pre_allocated_outputs, path
        assert state["resource_allocation_strategy"] == ("1" if policy.dynamic_allocation else "0"), path
    assert report["cuda_graphs_during_call"] is policy.cuda_graphs
    assert report["cuda_graphs_after_call"] is False
    assert report["golden"].startswith("PASS"), report["golden"]

    report["max_abs_error"] = max(
        c["max_abs_error"] for c in result.bundle.manifest.verification["comparisons"]
    )
    report["timings"] = result.bundle.manifest.timings
    REPORT["-".join(case)] = report
    if os.environ.get("GPU_REPORT"):
        Path(os.environ["GPU_REPORT"]).write_text(json.dumps(REPORT, indent=2))


@pytest.mark.parametrize("model", [m for m, _ in MODELS])
def test_dynamic_policy_holds_less_idle_memory_than_standard_when_loaded(
    model: str, bundles: dict[tuple[str, str, str], RunResult], artifacts: Path
) -> None:
    precision = dict(MODELS)[model]
    standard = probe(build(bundles, artifacts, (model, precision, "standard")).bundle.path)  # type: ignore[union-attr]
    dynamic = probe(build(bundles, artifacts, (model, precision, "dynamic")).bundle.path)  # type: ignore[union-attr]
    REPORT[f"{model}-idle-memory"] = {
        "standard_idle_bytes": standard["idle_memory_bytes"] - standard["baseline_memory_bytes"],
        "dynamic_idle_bytes": dynamic["idle_memory_bytes"] - dynamic["baseline_memory_bytes"],
    }
    if os.environ.get("GPU_REPORT"):
        Path(os.environ["GPU_REPORT"]).write_text(json.dumps(REPORT, indent=2))
    # mem_get_info is device-wide: compare what each fresh process added to its own baseline.
    idle = REPORT[f"{model}-idle-memory"]
    assert idle["dynamic_idle_bytes"] < idle["standard_idle_bytes"]


def load_built(
    bundles: dict[tuple[str, str, str], RunResult], artifacts: Path, model_index: int, runtime: str
) -> LoadedBundle:
    """Build (once) and load in this process the bundle of ``MODELS[model_index]`` under ``runtime``."""
    model, precision = MODELS[model_index]
    result = build(bundles, artifacts, (model, precision, runtime))
    assert result.bundle is not None
    return load_bundle(result.bundle.path)


def test_loaded_bundle_switches_policy_on_every_engine_when_set_at_runtime(
    bundles: dict[tuple[str, str, str], RunResult], artifacts: Path
) -> None:
    loaded = load_built(bundles, artifacts, 0, "standard")
    engines = find_engines(loaded.module)
    assert engines and not any(ref.engine.use_pre_allocated_outputs for ref in engines)
    inputs = make_inputs(loaded.specs, 3, loaded.precision, loaded.device)
    before = loaded(*inputs)
    report = loaded.set_runtime("preallocated")
    assert report.engines_configured == len(engines)
    assert all(ref.engine.use_pre_allocated_outputs for ref in engines)
    after = loaded(*inputs)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_loaded_bundle_rejects_bad_inputs_before_engine_runs_when_called(
    bundles: dict[tuple[str, str, str], RunResult], artifacts: Path
) -> None:
    loaded = load_built(bundles, artifacts, 0, "standard")
    good = make_inputs(loaded.specs, 3, loaded.precision, loaded.device)
    first = loaded.specs[0].name
    with pytest.raises(InputValidationError, match=first):
        loaded(good[0].cpu(), *good[1:])
    with pytest.raises(InputValidationError, match=first):
        loaded(good[0].to(torch.float64), *good[1:])
    with pytest.raises(InputValidationError, match="expected"):
        loaded(*good[:-1]) if len(good) > 1 else loaded(*good, good[0])


def test_dynamic_bundle_keeps_memory_while_resources_are_held(
    bundles: dict[tuple[str, str, str], RunResult], artifacts: Path
) -> None:
    loaded = load_built(bundles, artifacts, -1, "dynamic")
    model = MODELS[-1][0]
    inputs = make_inputs(loaded.specs, 3, loaded.precision, loaded.device)

    loaded(*inputs)
    released = gpu_memory_in_use()
    with loaded.hold_resources():
        loaded(*inputs)
        held = gpu_memory_in_use()
    loaded(*inputs)
    released_again = gpu_memory_in_use()
    REPORT[f"{model}-hold-resources"] = {"released": released, "held": held, "released_again": released_again}
    assert held > released
    assert released_again < held
