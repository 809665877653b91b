"""TensorRT bundles on a real GPU: the runtime policy survives save and reload on every engine.

For each model and runtime policy: compile -> bundle -> pack -> copy to another directory ->
load the archive in a fresh process that must not import ``torch_tensorrt`` (nor Hydra, omegaconf
or the stages) -> read the policy back from the engine objects -> golden outputs within
tolerance. In this process: every policy's loaded bundle called under every grad mode in every
order, threads calling models of different policies, bad inputs. Each model is compiled once per
distinct engine (the runner's compile cache) and each bundle loaded once per process.

Cases come from ``GPU_TEST_CASES`` (default ``bert:fp16,resnet50:fp32``); what the fresh
processes saw goes to ``GPU_REPORT`` (JSON) when that is set, and a table closes the run.
Latency comparisons are ``make bench``'s job, not these tests'.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from pipeline import LoadedBundle, load_bundle
from pipeline.bundle.pack import pack_bundle
from pipeline.config.schema import Tolerance
from pipeline.errors import InputValidationError
from pipeline.models import make_inputs
from pipeline.runner import RunResult
from pipeline.runtime.format import GOLDEN_NAME, Manifest
from pipeline.runtime.policy import runtime_preset
from pipeline.runtime.tensorrt import OWN_RUNNER
from pipeline.runtime.verification import compare
from pipeline.timing import gpu_memory_in_use
from tests.gpu.probe import HEAVY_MODULES, engine_states, probe_many_in_fresh_process
from tests.helpers import run

# Policies sharing one engine build come together: the runner compiles them once.
RUNTIMES = ["standard", "preallocated", "cudagraphs", "dynamic"]
MODELS = [
    tuple(case.split(":")) for case in os.environ.get("GPU_TEST_CASES", "bert:fp16,resnet50:fp32").split(",")
]
CASES = [(model, precision, runtime) for model, precision in MODELS for runtime in RUNTIMES]
CASE_IDS = ["-".join(c) for c in CASES]
REPORT: dict[str, dict[str, Any]] = {}
PROBES: dict[tuple[str, str, str], dict[str, Any]] = {}
BUNDLES: dict[tuple[str, str, str], RunResult] = {}
LOADED: dict[tuple[str, str, str], LoadedBundle] = {}
GRAD_MODES: dict[str, Callable[[], AbstractContextManager[Any]]] = {
    "plain": torch.enable_grad,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-artifacts")


def build(artifacts: Path, case: tuple[str, str, str]) -> RunResult:
    """The bundle of ``case``, built once per session."""
    if case not in BUNDLES:
        model, precision, runtime = case
        result = run(
            artifacts, f"model={model}", f"precision={precision}", f"runtime={runtime}", "backend=tensorrt"
        )
        assert result.bundle is not None and result.compiled is not None
        BUNDLES[case] = result
    return BUNDLES[case]


def loaded(artifacts: Path, case: tuple[str, str, str]) -> LoadedBundle:
    """The bundle of ``case`` loaded in this process, once."""
    if case not in LOADED:
        bundle = build(artifacts, case).bundle
        assert bundle is not None
        LOADED[case] = load_bundle(bundle.path)
    return LOADED[case]


def probe(artifacts: Path, case: tuple[str, str, str]) -> dict[str, Any]:
    """What a fresh process sees of ``case``'s bundle, packed and shipped to another directory.

    The four policies of a model are probed in one fresh process, one bundle after another
    (each loaded alone, then freed): every load is still the first of its bundle in a process
    that never imported torch_tensorrt, at a quarter of the process starts.
    """
    model, precision, _ = case
    siblings = [(model, precision, runtime) for runtime in RUNTIMES]
    bundles = [build(artifacts, sibling).bundle for sibling in siblings]
    if case not in PROBES:
        shipped = artifacts / "shipped" / f"{model}-{precision}"
        shipped.mkdir(parents=True)
        archives = []
        for bundle in bundles:
            assert bundle is not None
            archive = pack_bundle(bundle.path, artifacts / f"{bundle.path.name}.tar")
            archives.append(Path(shutil.move(archive, shipped / archive.name)))
        for sibling, report in zip(siblings, probe_many_in_fresh_process(archives, cwd=shipped), strict=True):
            PROBES[sibling] = report
    return PROBES[case]


def golden(manifest: Manifest, root: Path) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor], Tolerance]:
    data = load_file(str(root / GOLDEN_NAME))
    inputs = tuple(data[f"input.{spec['name']}"].cuda() for spec in manifest.inputs)
    outputs = [data[f"output.{i}"] for i in range(len(manifest.outputs))]
    return inputs, outputs, Tolerance(**manifest.verification["tolerance"])


def write_report() -> None:
    if os.environ.get("GPU_REPORT"):
        Path(os.environ["GPU_REPORT"]).write_text(json.dumps(REPORT, indent=2))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tensorrt_bundle_restores_policy_on_every_engine_when_loaded_in_fresh_process(
    case: tuple[str, str, str], artifacts: Path
) -> None:
    result = build(artifacts, case)
    assert result.bundle is not None
    policy = runtime_preset(case[2])
    report = dict(probe(artifacts, case))

    assert report["imported"] == dict.fromkeys(HEAVY_MODULES, False)
    assert report["engines_configured"] == report["engines_in_manifest"] > 0
    for path, state in report["engines"].items():
        assert state["pre_allocated_outputs"] is policy.pre_allocated_outputs, path
        assert state["resource_allocation_strategy"] == ("1" if policy.dynamic_allocation else "0"), path
    own_runner = report["load_report_engines"].get("runner") == OWN_RUNNER
    # The own runner records its CUDA graphs itself: Torch-TensorRT's process-wide mode stays off.
    assert report["cuda_graphs_during_call"] is (policy.cuda_graphs and not own_runner)
    assert report["cuda_graphs_after_call"] is False
    assert report["golden_passed"], report["golden"]

    manifest = result.bundle.manifest
    report["max_abs_error"] = max(c["max_abs_error"] for c in manifest.verification["comparisons"])
    report["timings"] = manifest.timings
    report["engine_bytes"] = sum(f.size for f in manifest.files if f.path.startswith("engines/"))
    report["bundle_bytes"] = sum(f.size for f in manifest.files)
    REPORT["-".join(case)] = report
    write_report()


@pytest.mark.parametrize("model", [m for m, _ in MODELS])
def test_dynamic_policy_holds_less_idle_memory_than_standard_when_loaded(model: str, artifacts: Path) -> None:
    precision = dict(MODELS)[model]
    standard = probe(artifacts, (model, precision, "standard"))
    dynamic = probe(artifacts, (model, precision, "dynamic"))
    idle = {
        "standard_idle_bytes": standard["idle_memory_bytes"],
        "dynamic_idle_bytes": dynamic["idle_memory_bytes"],
    }
    REPORT[f"{model}-idle-memory"] = idle
    write_report()
    assert idle["dynamic_idle_bytes"] < idle["standard_idle_bytes"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_loaded_bundle_matches_golden_under_every_grad_mode_when_modes_switch_in_any_order(
    case: tuple[str, str, str], artifacts: Path
) -> None:
    model = loaded(artifacts, case)
    inputs, reference, tolerance = golden(model.manifest, model.root)
    first = model(*inputs)
    for order in itertools.permutations(GRAD_MODES):
        for mode in order * 2:
            with GRAD_MODES[mode]():
                outputs = model(*inputs)
            assert all(c.passed for c in compare(f"{order}:{mode}", outputs, reference, tolerance)), (
                order,
                mode,
            )
            assert all(torch.equal(a, b) for a, b in zip(outputs, first, strict=True)), (order, mode)
            assert not any(t.requires_grad or t.is_inference() for t in outputs), (order, mode)


def test_loaded_bundles_give_golden_outputs_when_threads_call_models_of_different_policies(
    artifacts: Path,
) -> None:
    model, precision = MODELS[0]
    graphs = loaded(artifacts, (model, precision, "cudagraphs"))
    standard = loaded(artifacts, (model, precision, "standard"))
    calls, threads_per_model = 25, 3
    failures: list[str] = []
    rejected = {"bad inputs": 0}
    counting = threading.Lock()  # two bad callers add to the one counter

    def caller(target: LoadedBundle, name: str) -> None:
        inputs, reference, tolerance = golden(target.manifest, target.root)
        for i in range(calls):
            outputs = target(*inputs)
            if not all(c.passed for c in compare(name, outputs, reference, tolerance)):
                failures.append(f"{name} call {i}")

    def bad_caller(target: LoadedBundle) -> None:
        inputs, _, _ = golden(target.manifest, target.root)
        for _ in range(calls):
            try:
                target(inputs[0].cpu(), *inputs[1:])
            except InputValidationError:
                with counting:
                    rejected["bad inputs"] += 1

    threads = [
        threading.Thread(target=caller, args=(target, f"{target.policy.name}#{i}"))
        for target in (graphs, standard)
        for i in range(threads_per_model)
    ]
    threads += [
        threading.Thread(target=bad_caller, args=(graphs,)),
        threading.Thread(target=bad_caller, args=(standard,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a call never returned"
    assert failures == []
    assert rejected["bad inputs"] == 2 * calls
    REPORT["threads"] = {"threads": len(threads), "calls_per_thread": calls, "golden_failures": len(failures)}
    write_report()


def test_loaded_bundle_switches_policy_on_every_engine_when_set_at_runtime(artifacts: Path) -> None:
    model, precision = MODELS[0]
    bundle = build(artifacts, (model, precision, "standard")).bundle
    assert bundle is not None
    switched = load_bundle(bundle.path)  # its own copy: the shared one keeps its policy
    engines = engine_states(switched)
    assert engines and not any(state["pre_allocated_outputs"] for state in engines.values())
    inputs = make_inputs(switched.specs, 3, switched.precision, switched.device)
    before = switched(*inputs)
    report = switched.set_runtime("preallocated")
    assert report.engines_configured == len(engines)
    assert all(state["pre_allocated_outputs"] for state in engine_states(switched).values())
    after = switched(*inputs)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_loaded_bundle_rejects_bad_inputs_before_engine_runs_when_called(artifacts: Path) -> None:
    model, precision = MODELS[0]
    target = loaded(artifacts, (model, precision, "standard"))
    good = make_inputs(target.specs, 3, target.precision, target.device)
    first = target.specs[0].name
    with pytest.raises(InputValidationError, match=first):
        target(good[0].cpu(), *good[1:])
    with pytest.raises(InputValidationError, match=first):
        target(good[0].to(torch.float64), *good[1:])
    with pytest.raises(InputValidationError, match="expected"):
        target(*good[:-1]) if len(good) > 1 else target(*good, good[0])


@pytest.mark.parametrize("runtime", ["preallocated", "cudagraphs"])
def test_loaded_bundle_refuses_out_of_range_values_and_answers_the_next_call_when_values_are_checked(
    artifacts: Path, runtime: str
) -> None:
    model, precision = MODELS[0]
    target = loaded(artifacts, (model, precision, runtime))
    ranged = [i for i, spec in enumerate(target.specs) if spec.max_value is not None]
    if not ranged:
        pytest.skip(f"{model} declares no value range")
    assert target.policy.check_value_ranges
    good = make_inputs(target.specs, 5, target.precision, target.device)
    expected = [t.clone() for t in target(*good)]
    bad = list(good)
    bad[ranged[0]] = good[ranged[0]].clone()
    bad[ranged[0]].view(-1)[-1] = target.specs[ranged[0]].max_value + 1  # one token past the vocabulary
    with pytest.raises(InputValidationError, match="outside the declared range"):
        target(*bad)
    assert int(bad[ranged[0]].max()) == target.specs[ranged[0]].max_value + 1  # the caller's tensor unchanged
    for again, first in zip(target(*good), expected, strict=True):  # the engines' state intact
        torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_dynamic_bundle_keeps_memory_while_resources_are_held(artifacts: Path) -> None:
    model, precision = MODELS[-1]
    target = loaded(artifacts, (model, precision, "dynamic"))
    inputs = make_inputs(target.specs, 3, target.precision, target.device)

    target(*inputs)
    released = gpu_memory_in_use()
    with target.hold_resources():
        target(*inputs)
        held = gpu_memory_in_use()
    target(*inputs)
    released_again = gpu_memory_in_use()
    REPORT[f"{model}-hold-resources"] = {"released": released, "held": held, "released_again": released_again}
    write_report()
    assert held > released
    assert released_again < held


@pytest.mark.gpu_extended  # format 2 vs format 1, settled since; make test-gpu-full runs it
@pytest.mark.parametrize("model", [m for m, _ in MODELS])
def test_loaded_bundle_equals_torch_tensorrt_saved_program_bit_for_bit_when_engine_is_the_same(
    model: str, artifacts: Path
) -> None:
    """Format 2 (raw engine files) against format 1 (``torch_tensorrt.save`` as an exported
    program, reloaded with ``torch.export.load``) and the in-process module, on one engine."""
    import torch_tensorrt

    case = (model, dict(MODELS)[model], "standard")
    result = build(artifacts, case)
    assert result.compiled is not None
    target = loaded(artifacts, case)
    inputs, _, _ = golden(target.manifest, target.root)
    old_format = artifacts / f"{model}-old-format.ep"
    torch_tensorrt.save(
        result.compiled.module,
        str(old_format),
        output_format="exported_program",
        arg_inputs=list(inputs),
        retrace=False,
    )
    reloaded = torch.export.load(str(old_format)).module()
    with torch.no_grad():
        expected = [t.clone() for t in reloaded(*inputs)]
        fresh = [t.clone() for t in result.compiled.module(*inputs)]
    outputs = target(*inputs)
    assert len(outputs) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(outputs, fresh, strict=True))
