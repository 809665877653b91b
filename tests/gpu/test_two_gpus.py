"""Two GPUs in one host: a model pinned to the GPU it was loaded on, and one model per GPU.

Runs on a host with two or more GPUs (the ``nvidia-h200-x2`` kind); skipped with the reason on a
host with one. A bundle is built on ``cuda:0`` and loaded with ``device="cuda:1"``: its engines
live on GPU 1 (memory rises there, not on GPU 0), calls run there, outputs are on ``cuda:1`` and
match the golden ones, inputs on ``cuda:0`` are refused, the load report fingerprints GPU 1, and the
caller's current device is left as it was. Then the bundle is loaded once per GPU and called from 8
threads at once, each with its own inputs: every output bit for bit the single-threaded answer;
the throughput of the two together against one alone is recorded (a figure, not a test).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline import LoadedBundle, load_bundle
from pipeline.errors import InputValidationError
from pipeline.runtime.verification import compare
from tests.gpu.test_concurrency import CALLS, THREADS, distinct_inputs, hammer
from tests.gpu.test_tensorrt_bundles import REPORT, build, golden, write_report

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.skipif(
    GPUS < 2, reason=f"needs two CUDA GPUs (nvidia-h200-x2); this host has {GPUS}"
)
# ResNet-152 x100 is GPU-bound: two GPUs should give close to twice one's throughput.
MODEL, PRECISION = os.environ.get("GPU_TWO_GPU_CASE", "resnet152:fp32").split(":")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-two")


def in_use(index: int) -> int:
    torch.cuda.synchronize(index)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(index)
    return int(total - free)


def test_bundle_built_on_gpu0_runs_on_gpu1_when_loaded_with_device_cuda1(artifacts: Path) -> None:
    with torch.cuda.device(0):
        bundle = build(artifacts, (MODEL, PRECISION, "standard")).bundle
    assert bundle is not None
    before = (in_use(0), in_use(1))
    model = load_bundle(bundle.path, device="cuda:1")
    loaded = (in_use(0), in_use(1))
    grew = (loaded[0] - before[0], loaded[1] - before[1])
    REPORT["two-gpus-load-memory"] = {"gpu0_grew": grew[0], "gpu1_grew": grew[1]}
    write_report()
    assert grew[1] > 0 and grew[0] <= 0.05 * grew[1], grew

    inputs, reference, tolerance = golden(model.manifest, model.root)
    inputs = tuple(t.to("cuda:1") for t in inputs)
    torch.cuda.set_device(0)
    outputs = model(*inputs)
    assert torch.cuda.current_device() == 0  # the caller's device, as it was
    assert all(t.device == torch.device("cuda", 1) for t in outputs)
    assert all(c.passed for c in compare("golden", outputs, reference, tolerance))
    with pytest.raises(InputValidationError, match=r"on cuda:0, but the model runs on cuda:1"):
        model(*(t.to("cuda:0") for t in inputs))
    assert model.load_report["device"] == "cuda:1"
    assert model.load_report["host"]["gpu"] == torch.cuda.get_device_name(1)
    model.close()


def test_one_model_per_gpu_gives_every_thread_its_own_answer_when_both_are_called_at_once(
    artifacts: Path,
) -> None:
    bundle = build(artifacts, (MODEL, PRECISION, "standard")).bundle
    assert bundle is not None
    models = [load_bundle(bundle.path, device=f"cuda:{index}") for index in (0, 1)]
    counts = hammer(models)
    REPORT["two-gpus-threads"] = dict(counts)

    def calls_per_second(targets: list[LoadedBundle]) -> float:
        batches = {id(m): distinct_inputs(m, 1)[0] for m in targets}
        done = threading.Barrier(len(targets) + 1)

        def run(target: LoadedBundle) -> None:
            for _ in range(CALLS):
                target(*batches[id(target)])
            torch.cuda.synchronize(target.device)
            done.wait()

        start = time.perf_counter()
        workers = [threading.Thread(target=run, args=(t,)) for t in targets]
        for worker in workers:
            worker.start()
        done.wait()
        return len(targets) * CALLS / (time.perf_counter() - start)

    one, both = calls_per_second(models[:1]), calls_per_second(models)
    REPORT["two-gpus-throughput"] = {
        "one_gpu_calls_per_s": one,
        "two_gpus_calls_per_s": both,
        "ratio": both / one,
    }
    write_report()
    for model in models:
        model.close()
    assert counts == {"at return: right": THREADS * CALLS, "at the end: right": THREADS * CALLS}, counts
