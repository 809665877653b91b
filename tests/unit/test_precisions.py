"""Precisions: composition, the refusals before any work, identity, and NaN/Inf refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import compose, config_dict, resolve
from pipeline.config.schema import BackendKind, Precision
from pipeline.errors import ConfigError, VerificationError
from pipeline.identity import engine_key
from pipeline.quantization import precisions
from pipeline.quantization.precisions import (
    PRECISIONS,
    check_precision_host,
    check_precision_model,
    check_precision_request,
)
from pipeline.report import precision_markdown, precision_rows
from pipeline.runtime.format import FileEntry, Manifest
from pipeline.runtime.types import DType, TaskTolerance, Tolerance, torch_dtype
from pipeline.runtime.verification import VerificationReport, compare, compare_task
from tests.helpers import config_for, run, sample_manifest

OFFERED = [p for p, spec in PRECISIONS.items() if spec.refused is None]
REFUSED = [p for p, spec in PRECISIONS.items() if spec.refused is not None]
H200_RTX = {"sm": "9.0", "gpu": "NVIDIA H200", "tensorrt_build": "tensorrt-rtx", "torch_tensorrt": "2.11.0"}


@pytest.mark.parametrize("precision", list(Precision), ids=lambda p: p.value)
def test_config_composes_when_any_precision_is_selected(precision: Precision) -> None:
    config = resolve(compose([f"precision={precision.value}"]))
    assert config.precision is precision
    assert config.verify.tolerance(precision) is getattr(config.verify, precision.value, config.verify.fp32)


@pytest.mark.parametrize("precision", REFUSED, ids=lambda p: p.value)
def test_precision_request_is_refused_with_reason_when_precision_is_not_offered(precision: Precision) -> None:
    with pytest.raises(ConfigError, match=rf"^precision={precision.value}: .* is not offered: .*; use "):
        check_precision_request(resolve(compose([f"precision={precision.value}"])))


@pytest.mark.parametrize("precision", REFUSED, ids=lambda p: p.value)
def test_pipeline_refuses_before_building_when_precision_is_not_offered(
    precision: Precision, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="is not offered"):
        run(tmp_path, "model=tiny_cnn", f"precision={precision.value}")
    assert not (tmp_path / "bundles").exists()


@pytest.mark.parametrize("precision", ["fp8", "int8", "int8_weight_only"])
def test_precision_request_is_refused_when_backend_is_export(precision: str) -> None:
    config = resolve(compose([f"precision={precision}", "backend.kind=export"]))
    with pytest.raises(ConfigError, match="run only in TensorRT engines"):
        check_precision_request(config)


def test_precision_request_names_the_extra_when_modelopt_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precisions, "modelopt_available", lambda: False)
    with pytest.raises(ConfigError, match=r"needs NVIDIA ModelOpt .*pip install '\.\[quant\]'"):
        check_precision_request(resolve(compose(["precision=fp8"])))


def test_precision_host_check_refuses_quantized_precision_when_no_tensorrt_backend() -> None:
    with pytest.raises(ConfigError, match="fp8: needs the tensorrt backend"):
        check_precision_host(resolve(compose(["precision=fp8"])), BackendKind.export, {})


@pytest.mark.parametrize(("precision", "sm"), [("bf16", "7.5"), ("fp8", "8.6"), ("int8", "7.0")])
def test_precision_host_check_refuses_when_gpu_sm_is_too_low(precision: str, sm: str) -> None:
    config = resolve(compose([f"precision={precision}"]))
    with pytest.raises(ConfigError, match=rf"needs a GPU of SM >= .*is SM {sm}$"):
        check_precision_host(config, BackendKind.tensorrt, {**H200_RTX, "sm": sm})


def test_precision_host_check_refuses_int8_activations_when_rtx_build_is_2_11() -> None:
    config = resolve(compose(["precision=int8"]))
    with pytest.raises(ConfigError, match="refuses INT8 activation quantization"):
        check_precision_host(config, BackendKind.tensorrt, H200_RTX)
    standard = {**H200_RTX, "tensorrt_build": "tensorrt"}
    assert check_precision_host(config, BackendKind.tensorrt, standard) is None


@pytest.mark.parametrize("precision", ["bf16", "fp8", "int8_weight_only"])
def test_precision_host_check_notes_off_matrix_gpu_when_hopper_runs_tensorrt_rtx(precision: str) -> None:
    note = check_precision_host(resolve(compose([f"precision={precision}"])), BackendKind.tensorrt, H200_RTX)
    assert note is not None and "not SM 9.0" in note and "verification decides" in note


def test_precision_model_check_refuses_fp8_convolutions_when_rtx_matrix_does_not_list_the_gpu() -> None:
    convolutional = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    config = resolve(compose(["model=tiny_cnn", "precision=fp8"]))
    with pytest.raises(ConfigError, match=r"^precision=fp8: tiny_cnn has convolutions, .* not SM 9.0: .*NaN"):
        check_precision_model(config, H200_RTX, convolutional)
    # Allowed where the matrix lists the GPU, on standard TensorRT, and for models without convolutions.
    check_precision_model(config, {**H200_RTX, "sm": "8.9"}, convolutional)
    check_precision_model(config, {**H200_RTX, "tensorrt_build": "tensorrt"}, convolutional)
    check_precision_model(config, H200_RTX, torch.nn.Sequential(torch.nn.Linear(4, 4)))
    check_precision_model(resolve(compose(["model=tiny_cnn", "precision=bf16"])), H200_RTX, convolutional)


@pytest.mark.parametrize("precision", OFFERED, ids=lambda p: p.value)
def test_input_dtype_follows_precision_when_input_is_floating(precision: Precision) -> None:
    expected = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16}.get(precision, torch.float16)
    assert torch_dtype(DType.float32, precision) == expected
    assert torch_dtype(DType.int64, precision) == torch.int64


def test_engine_key_changes_with_calibration_only_when_precision_calibrates() -> None:
    def key(*overrides: str) -> str:
        return engine_key(config_dict(resolve(compose(["model=tiny_cnn", *overrides]))), "w")

    assert key("precision=fp8") != key("precision=fp8", "calibration.samples=7")
    assert key("precision=fp16") == key("precision=fp16", "calibration.samples=7")
    assert key("precision=fp16") != key("precision=bf16")


def test_compare_fails_output_when_it_holds_nan_whatever_the_tolerance() -> None:
    anything = Tolerance(atol=float("inf"), rtol=float("inf"), min_cosine=-1.0)
    actual = (torch.tensor([1.0, float("nan")]),)
    report = VerificationReport(
        tolerance=anything, comparisons=compare("golden", actual, (torch.ones(2),), anything)
    )
    assert not report.passed
    assert report.summary() == (
        "FAIL: the model's output 0 holds NaN or Inf on golden (refused whatever the tolerance)"
    )


def test_compare_fails_output_when_reference_holds_inf() -> None:
    anything = Tolerance(atol=float("inf"), rtol=float("inf"), min_cosine=-1.0)
    comparisons = compare("random-1", (torch.ones(2),), (torch.tensor([1.0, float("inf")]),), anything)
    report = VerificationReport(tolerance=anything, comparisons=comparisons)
    assert not report.passed and "eager reference's output 0 holds NaN or Inf" in report.summary()


def test_task_check_fails_when_top1_disagrees_or_output_is_not_finite() -> None:
    tolerance = TaskTolerance(min_cosine=-1.0, min_top1=0.75)
    reference = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    swapped = reference.clone()
    swapped[0] = torch.tensor([1.0, 0.0])
    swapped[1] = torch.tensor([0.0, 1.0])
    (half,) = compare_task("golden", (swapped,), (reference,), tolerance)
    assert half.top1 == 0.5 and not half.passed
    (same,) = compare_task("golden", (reference,), (reference,), tolerance)
    assert same.top1 == 1.0 and same.passed
    (named,) = compare_task("golden", (swapped,), (reference,), tolerance, ["pooler_output"])
    assert named.top1 is None  # not a classifier's logits: cosine only
    (broken,) = compare_task("golden", (reference * float("nan"),), (reference,), tolerance)
    assert not broken.passed and not broken.finite


def test_pipeline_refuses_to_publish_when_model_output_is_nan(tmp_path: Path) -> None:
    overrides = (
        "model=tiny_cnn",
        "model.architecture._target_=tests.helpers.nan_model",
        "verify.fp32.atol=1e30",
    )
    with pytest.raises(VerificationError) as caught:
        run(tmp_path, *overrides)
    message = str(caught.value)
    assert "\n" not in message
    assert "holds NaN or Inf on golden (refused whatever the tolerance)" in message
    assert "nothing published" in message
    assert not list((tmp_path / "bundles").glob("tiny_cnn-*"))


def test_verification_keeps_fp32_reference_when_precision_is_reduced(tmp_path: Path) -> None:
    config = config_for(tmp_path, "model=tiny_cnn", "precision=bf16")
    from pipeline.stages.build import build_model

    built = build_model(config, torch.device("cpu"))
    assert built.reference is not None
    assert next(built.reference.parameters()).dtype == torch.float32
    assert next(built.eager.parameters()).dtype == torch.bfloat16


def _benched(precision: str, median_ms: float, size: int) -> Manifest:
    verification = {
        "passed": True,
        "comparisons": [{"cosine": 0.99991}],
        "task": [{"cosine": 0.9981, "top1": 0.97}, {"cosine": 0.999, "top1": None}],
    }
    return sample_manifest(
        precision=precision,
        model_name="bert",
        backend="tensorrt",
        bundle_id=precision.ljust(16, "0"),
        verification=verification,
        bench={
            "policy": "preallocated",
            "latency": {"loaded": {"median_ms": median_ms, "p90_ms": median_ms}},
        },
        files=[FileEntry("engines/a.engine", size, "0" * 64)],
    )


def test_report_flags_quantized_engine_when_it_is_not_faster_than_fp16() -> None:
    rows = precision_rows([_benched("fp16", 1.0, 2_000_000), _benched("fp8", 1.2, 1_000_000)])
    table = precision_markdown(rows)
    fp8_line = next(line for line in table.splitlines() if "| fp8 |" in line)
    assert "| 1.20x |" in fp8_line and "not faster than fp16" in fp8_line
    assert "cos 0.99991; vs fp32 cos 0.9981, top-1 0.970" in fp8_line and "| 1.0 |" in fp8_line
    faster = precision_markdown(precision_rows([_benched("fp16", 1.0, 1), _benched("fp8", 0.8, 1)]))
    assert "not faster" not in faster and "| 0.80x |" in faster
