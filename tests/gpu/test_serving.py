"""The serving layer on a real engine: requests arrive as host arrays, are checked on the host,
run on the model's GPU, and a bad request fails alone with the loaded model's one-line message.
(Triton and Ray themselves are tested on CPU in tests/serve/; ``python -m pipeline.serve`` on a
GPU host needs the ``serve`` extra there.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.runtime.verification import compare
from pipeline.serve.serving import ServedBundle
from tests.gpu.test_tensorrt_bundles import MODELS, golden, loaded


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
