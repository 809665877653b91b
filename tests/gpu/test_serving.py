"""The serving layer on a real engine: requests arrive as host arrays, are checked on the host,
run on the model's GPU, and a bad request fails alone with the loaded model's one-line message.
(Triton and Ray themselves are tested on CPU in tests/serve/; ``python -m pipeline.serve`` on a
GPU host needs the ``serve`` extra there.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.inputs import make_inputs
from pipeline.runtime.verification import compare
from pipeline.serve.serving import ServedBundle
from tests.gpu.test_tensorrt_bundles import MODELS, build, golden, loaded


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-serving")


def test_served_bundle_answers_host_requests_on_the_gpu_and_refuses_a_bad_one_alone(artifacts: Path) -> None:
    model_name, precision = MODELS[0]
    model = loaded(artifacts, (model_name, precision, "preallocated"))
    served = ServedBundle(model)
    inputs, reference, tolerance = golden(model.manifest, model.root)
    good = {spec.name: tensor.cpu().numpy() for spec, tensor in zip(model.specs, inputs, strict=True)}
    bad = dict(good)
    first = model.specs[0]
    if first.max_value is not None:  # a token id past the vocabulary
        bad[first.name] = np.full_like(good[first.name], first.max_value + 1)
    else:  # a wrong dtype
        bad[first.name] = good[first.name].astype(np.float64)
    outcomes = served.run([good, bad, good])
    assert outcomes[1].invalid and outcomes[1].error and first.name in outcomes[1].error
    for outcome in (outcomes[0], outcomes[2]):
        assert outcome.error is None, outcome.error
        outputs = [torch.from_numpy(array) for array in outcome.outputs.values()]
        assert all(c.passed for c in compare("served", outputs, reference, tolerance))


def test_triton_server_answers_golden_sets_and_each_of_16_threads_gets_its_own_answer_when_bundle_is_tensorrt(
    artifacts: Path,
) -> None:
    """The real tritonserver (the ``serve`` extra) with a KIND_GPU instance of a TensorRT bundle
    built here: golden round trip over HTTP, then 64 requests with distinct inputs from 16
    threads, each answer compared with the in-process answer to the same inputs."""
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("tritonclient", reason="the GPU host serves with scripts/gpu-serve.sh's wheels")
    from pipeline.serve import ServeClient, check_server, export_triton
    from pipeline.serve.server import ServeError, TritonInstall, TritonServer

    try:
        TritonInstall.find()
    except ServeError as missing:
        pytest.skip(f"{missing}: serving on the GPU host needs the serve wheels (scripts/gpu-serve.sh)")
    model_name, precision = MODELS[0]
    case = (model_name, precision, "preallocated")
    bundle = build(artifacts, case).bundle
    assert bundle is not None
    in_process = loaded(artifacts, case)
    _, _, tolerance = golden(in_process.manifest, in_process.root)
    workdir = artifacts / "triton"
    exported = export_triton(bundle.path, workdir / "models")
    assert "KIND_GPU" in exported.config.to_pbtxt()
    with (workdir / "tritonserver.log").open("w") as log:
        server = TritonServer(workdir / "models", port=0, metrics_port=0, workdir=workdir, log=log)
        try:
            server.start(timeout_s=300)
            checked = check_server(server.url, bundle.path, timeout_s=60)
            assert checked.passed, checked.summary()

            requests = []
            for seed in range(64):
                tensors = make_inputs(in_process.specs, seed, in_process.precision, in_process.device)
                requests.append(
                    {spec.name: t.cpu().numpy() for spec, t in zip(in_process.specs, tensors, strict=True)}
                )
            expected = [
                [o.cpu() for o in in_process(*[torch.from_numpy(a).cuda() for a in r.values()])]
                for r in requests
            ]
            client = ServeClient(server.url, timeout_s=60)

            def ask(index: int) -> dict[str, np.ndarray]:
                return client.infer(exported.config.name, requests[index], binary=True)

            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(ask, range(64)))
            wrong = []
            for index, (answer, reference) in enumerate(zip(answers, expected, strict=True)):
                got = [torch.from_numpy(np.array(value)) for value in answer.values()]
                if not all(c.passed for c in compare(f"request {index}", got, reference, tolerance)):
                    wrong.append(index)
            assert not wrong, f"{len(wrong)}/64 requests answered wrongly through Triton: {wrong[:8]}"
        finally:
            assert server.stop() is not None
