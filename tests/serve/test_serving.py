"""ServedBundle in-process: what every server of a bundle does with a batch of requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import BundleError
from pipeline.runtime import load_bundle
from pipeline.serve.serving import ServedBundle
from pipeline.stages.package import PublishedBundle
from tests.helpers import flip_byte, run


def ids(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq + 1, batch)
    return {
        "input_ids": rng.integers(0, 1000, (batch, seq), dtype=np.int32),
        "attention_mask": (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32),
        "token_type_ids": rng.integers(0, 2, (batch, seq), dtype=np.int32),
    }


def test_served_bundle_answers_each_request_alone_when_one_in_a_batch_is_bad(
    dynamic_bert_bundle: PublishedBundle,
) -> None:
    served = ServedBundle.load(dynamic_bert_bundle.path, batching=True)
    good = [ids(2, 12, seed=1), ids(3, 12, seed=2), ids(1, 20, seed=3)]
    bad = {**good[0], "token_type_ids": good[0]["token_type_ids"][:, :8]}
    outcomes = served.run([good[0], bad, good[1], good[2]])
    assert outcomes[1].invalid
    assert (
        outcomes[1].error == "inputs 'input_ids' and 'token_type_ids' must agree on dimension 'seq': 12 vs 8"
    )
    with load_bundle(dynamic_bert_bundle.path) as reference:
        for request, outcome in zip(good, [outcomes[0], *outcomes[2:]], strict=True):
            expected = reference(**{name: torch.from_numpy(value) for name, value in request.items()})
            assert outcome.error is None
            assert list(outcome.outputs) == ["last_hidden_state", "pooler_output"]
            for name, value in outcome.outputs.items():
                np.testing.assert_allclose(value, expected[name].numpy(), atol=1e-4, rtol=1e-4)
    served.close()


def test_served_bundle_answers_only_the_outputs_each_request_asks_for_when_batched(
    dynamic_bert_bundle: PublishedBundle,
) -> None:
    served = ServedBundle.load(dynamic_bert_bundle.path, batching=True)
    requests = [ids(2, 12, seed=1), ids(1, 12, seed=2), ids(3, 12, seed=3), ids(1, 12, seed=4)]
    asks = [["pooler_output"], [], ["last_hidden_state", "pooler_output"], ["last_hidden_state"]]
    outcomes = served.run(requests, asks)
    served.close()
    assert [list(outcome.outputs) for outcome in outcomes] == [
        ["pooler_output"],
        ["last_hidden_state", "pooler_output"],  # none named: all
        ["last_hidden_state", "pooler_output"],
        ["last_hidden_state"],
    ]
    with load_bundle(dynamic_bert_bundle.path) as reference:
        for request, outcome in zip(requests, outcomes, strict=True):
            expected = reference(**{name: torch.from_numpy(value) for name, value in request.items()})
            for name, value in outcome.outputs.items():
                np.testing.assert_allclose(value, expected[name].numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_agrees_with_numpy_when_array_holds_nan_inf_or_extremes(dtype: type) -> None:
    from pipeline.serve.serving import all_finite

    info = np.finfo(dtype)
    finite = np.array([0.0, -0.0, info.max, info.min, info.tiny, info.smallest_subnormal, 1.5], dtype)
    assert all_finite(finite) and all_finite(finite.reshape(7, 1)[::2])
    for special in (np.nan, np.inf, -np.inf):
        spoiled = finite.copy()
        spoiled[3] = special
        assert not all_finite(spoiled)
    assert all_finite(np.arange(6, dtype=np.int32))


def test_served_bundle_refuses_to_load_when_golden_check_fails(
    bundle_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.serve.serving as serving
    from pipeline.runtime.types import Tolerance
    from pipeline.runtime.verification import OutputComparison, VerificationReport

    failing = VerificationReport(
        tolerance=Tolerance(atol=0.0, rtol=0.0, min_cosine=1.0),
        comparisons=[OutputComparison("golden", 0, 1.0, 1.0, 0.5, 0.0, passed=False)],
    )
    monkeypatch.setattr(serving, "verify_loaded", lambda loaded: failing)
    with pytest.raises(BundleError, match="golden check failed on cpu: FAIL"):
        ServedBundle.load(bundle_copy)


def test_served_bundle_refuses_to_load_when_bundle_is_tampered(bundle_copy: Path) -> None:
    flip_byte(bundle_copy / "model" / "model.pt2")
    with pytest.raises(BundleError, match=r"model/model\.pt2: sha256 does not match"):
        ServedBundle.load(bundle_copy)


def test_served_bundle_and_triton_export_refuse_in_one_line_when_bundle_is_bf16(
    session_artifacts: Path, tmp_path: Path
) -> None:
    from pipeline.serve import export_triton
    from pipeline.serve.serving import BF16_NOT_SERVED

    result = run(session_artifacts, "model=tiny_bert", "precision=bf16")
    assert result.bundle is not None
    with pytest.raises(BundleError) as served:
        ServedBundle.load(result.bundle.path)
    with pytest.raises(BundleError) as exported:
        export_triton(result.bundle.path, tmp_path / "models")
    assert str(served.value) == str(exported.value) == BF16_NOT_SERVED
    assert not (tmp_path / "models" / "tiny_bert").exists()


def test_served_bundle_times_each_phase_of_its_requests_when_profiling_is_on(
    dynamic_bert_bundle: PublishedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.serve.serving import PHASES, PROFILE_VARIABLE

    quiet = ServedBundle.load(dynamic_bert_bundle.path, batching=True)
    assert quiet.profile is None  # off unless asked for: no sync added to the model's calls
    quiet.close()
    monkeypatch.setenv(PROFILE_VARIABLE, "1")
    served = ServedBundle.load(dynamic_bert_bundle.path, batching=True)
    assert served.profile is not None
    served.run([ids(1, 12, seed=1), ids(2, 12, seed=2)])
    served.run([ids(1, 16, seed=3)])
    assert served.profile.requests == 3
    assert all(served.profile.seconds[phase] > 0 for phase in PHASES)
    summary = served.profile.summary()
    assert summary.startswith("serving profile over 3 requests (mean per request): inputs ")
    assert ", model " in summary and ", outputs " in summary
    served.close()
