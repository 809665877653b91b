"""The loaded model's call contract on real engines: callers on many threads (and streams) each get
exactly the answer to their own inputs, under every policy, recorded or set at load; two models on
one GPU; ``close()`` gives the GPU memory back; the caller's device and stream are left as they were.

Each thread has its own inputs; every output is compared bit for bit with the single-threaded answer
to the same inputs twice: right after the call and again once every thread has finished, so an
output that a later call (of any thread) overwrote counts as wrong. Half the threads call from a
CUDA stream of their own.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from pipeline import LoadedBundle, load_bundle
from pipeline.config.schema import Tolerance
from pipeline.models import make_inputs
from pipeline.runtime.verification import compare
from pipeline.timing import gpu_memory_in_use
from tests.gpu.test_tensorrt_bundles import MODELS, REPORT, RUNTIMES, build, loaded, write_report

THREADS, CALLS = 8, 20
# How each policy is put on: recorded in its own bundle, or set at load on the standard bundle.
VARIANTS = [(policy, "recorded") for policy in RUNTIMES] + [
    (policy, "set at load") for policy in RUNTIMES if policy != "standard"
]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-concurrency")


Inputs = tuple[torch.Tensor, ...]


def distinct_inputs(model: LoadedBundle, count: int) -> list[Inputs]:
    return [make_inputs(model.specs, 1000 + i, model.precision, model.device) for i in range(count)]


def answers(model: LoadedBundle, inputs: list[Inputs]) -> list[list[torch.Tensor]]:
    """Single-threaded answers, copied out of whatever the model returned."""
    return [[t.clone() for t in model(*x)] for x in inputs]


def tally(
    got: list[torch.Tensor],
    index: int,
    expected: list[list[torch.Tensor]],
    tolerance: Tolerance | None = None,
) -> str:
    """``right`` (bit for bit), ``another caller's answer``, or ``neither``; with a ``tolerance``,
    a near answer counts as ``right within tolerance`` (or another caller's, if near theirs)."""

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    def near(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        # The bundle's own rule (verification's): max error within atol + rtol * max|reference|.
        assert tolerance is not None
        if any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
            return False
        return all(c.passed for c in compare("thread", a, b, tolerance))

    others = [other for i, other in enumerate(expected) if i != index]
    if same(got, expected[index]):
        return "right"
    if any(same(got, other) for other in others):
        return "another caller's answer"
    if tolerance is not None and near(got, expected[index]):
        return "right within tolerance"
    if tolerance is not None and any(near(got, other) for other in others):
        return "another caller's answer"
    return "neither"


def hammer(
    models: list[LoadedBundle],
    threads: int = THREADS,
    calls: int = CALLS,
    given: dict[int, list[Inputs]] | None = None,
    tolerance: Tolerance | None = None,
    expected: dict[int, list[list[torch.Tensor]]] | None = None,
) -> Counter[str]:
    """``threads`` threads (model ``i % len(models)``), each calling ``calls`` times with its own
    inputs (``given[id(model)][i]``, else drawn at the opt shape), half of them from a stream of
    their own; a tally of every output, checked twice against ``expected`` (single-threaded
    answers, computed first when not given)."""
    inputs = given or {id(m): distinct_inputs(m, threads) for m in models}
    expected = expected or {id(m): answers(m, inputs[id(m)]) for m in models}
    counts: Counter[str] = Counter()
    kept: list[tuple[LoadedBundle, int, list[torch.Tensor]]] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def caller(index: int) -> None:
        model = models[index % len(models)]
        stream = torch.cuda.Stream(model.device) if index % 2 else torch.cuda.current_stream(model.device)
        start.wait()
        with torch.cuda.stream(stream):
            for _ in range(calls):
                outputs = list(model(*inputs[id(model)][index]))
                verdict = tally(outputs, index, expected[id(model)], tolerance)
                with lock:
                    counts[f"at return: {verdict}"] += 1
                    kept.append((model, index, outputs))
        stream.synchronize()

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert not any(worker.is_alive() for worker in workers), "a call never returned"
    torch.cuda.synchronize()
    for model, index, outputs in kept:
        counts[f"at the end: {tally(outputs, index, expected[id(model)], tolerance)}"] += 1
    return counts


def load_variant(artifacts: Path, model: str, precision: str, policy: str, how: str) -> LoadedBundle:
    if how == "recorded":
        return loaded(artifacts, (model, precision, policy))
    bundle = build(artifacts, (model, precision, "standard")).bundle
    assert bundle is not None
    return load_bundle(bundle.path, runtime=policy)


@pytest.mark.parametrize(("policy", "how"), VARIANTS, ids=[f"{p}-{h.replace(' ', '-')}" for p, h in VARIANTS])
def test_loaded_bundle_gives_every_thread_its_own_answer_when_threads_call_with_distinct_inputs(
    policy: str, how: str, artifacts: Path
) -> None:
    model_name, precision = MODELS[0]
    model = load_variant(artifacts, model_name, precision, policy, how)
    assert model.policy.name == policy
    counts = hammer([model])
    REPORT[f"threads-{model_name}-{policy}-{how.replace(' ', '-')}"] = dict(counts)
    write_report()
    if how != "recorded":
        model.close()
    assert counts == {"at return: right": THREADS * CALLS, "at the end: right": THREADS * CALLS}, counts


def test_two_models_on_one_gpu_give_each_thread_its_own_answer_when_called_together(artifacts: Path) -> None:
    model_name, precision = MODELS[0]
    models = [loaded(artifacts, (model_name, precision, p)) for p in ("cudagraphs", "preallocated")]
    counts = hammer(models)
    REPORT[f"threads-{model_name}-two-models"] = dict(counts)
    write_report()
    assert counts == {"at return: right": THREADS * CALLS, "at the end: right": THREADS * CALLS}, counts


def test_loaded_bundle_leaves_caller_device_and_stream_as_they_were_when_called(artifacts: Path) -> None:
    model_name, precision = MODELS[0]
    model = loaded(artifacts, (model_name, precision, "cudagraphs"))
    (inputs,) = distinct_inputs(model, 1)
    stream = torch.cuda.Stream(model.device)
    with torch.cuda.stream(stream):
        model(*inputs)
        assert torch.cuda.current_stream(model.device) == stream
    assert torch.cuda.current_device() == model.device.index
    assert model.load_report["device"] == str(model.device)
    assert model.load_report["host"]["gpu"] == torch.cuda.get_device_name(model.device)


def test_close_gives_gpu_memory_back_when_model_is_closed(artifacts: Path) -> None:
    model_name, precision = MODELS[0]
    bundle = build(artifacts, (model_name, precision, "preallocated")).bundle
    assert bundle is not None
    before = gpu_memory_in_use()
    model = load_bundle(bundle.path, device="cuda:0")
    assert model.device == torch.device("cuda", 0) and model.load_report["device"] == "cuda:0"
    (inputs,) = distinct_inputs(model, 1)
    outputs = model(*inputs)
    del outputs
    loaded_bytes = gpu_memory_in_use()
    model.close()
    after = gpu_memory_in_use()
    REPORT[f"close-{model_name}"] = {"before": before, "loaded": loaded_bytes, "after_close": after}
    write_report()
    assert loaded_bytes > before
    # "Within 5% of before the load": of what the load took, and of the total in use.
    assert after - before <= 0.05 * (loaded_bytes - before), (before, loaded_bytes, after)
