"""ModelOpt calibration on the CPU: the config's source, the recorded scales, the export graph.

Needs nvidia-modelopt (the ``quant`` extra, installed by ``make setup``); importing it takes
seconds, so one model is calibrated per test module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.config.schema import CalibrationAlgorithm, PipelineConfig, Precision
from pipeline.errors import ConfigError
from pipeline.quantization.calibrate import CalibrationRecord, export_mode, modelopt_config
from pipeline.stages.build import BuiltModel, build_model
from tests.helpers import config_for

CPU = torch.device("cpu")


def _fp8_config(tmp_path: Path, *overrides: str) -> PipelineConfig:
    return config_for(tmp_path, "model=tiny_cnn", "precision=fp8", "calibration.samples=8", *overrides)


@pytest.fixture(scope="module")
def fp8_cnn(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_model(_fp8_config(tmp_path_factory.mktemp("fp8")), CPU)


def _amax_values(record: CalibrationRecord) -> list[float]:
    values: list[float] = []
    for amax in record.amax.values():
        values.extend(torch.tensor(amax, dtype=torch.float64).reshape(-1).tolist())
    return values


def test_fp8_calibration_records_finite_amax_for_every_quantizer_when_built_on_cpu(
    fp8_cnn: BuiltModel,
) -> None:
    record = fp8_cnn.calibration
    assert record is not None
    assert record.modelopt_config == "FP8_DEFAULT_CFG" and record.algorithm == "max"
    assert record.source == "pipeline.quantization.sources.random_inputs"
    assert record.batches == 4 and record.batch_size == 2  # 8 samples in batches of the declared 2 rows
    names = set(record.amax)
    assert any(name.endswith("weight_quantizer") for name in names)
    assert any(name.endswith("input_quantizer") for name in names)
    assert all(math.isfinite(v) and v > 0 for v in _amax_values(record))
    assert json.loads(record.to_json())["amax"] == record.amax


def test_fp8_export_holds_tensorrt_quantize_ops_when_exported_in_modelopt_mode(fp8_cnn: BuiltModel) -> None:
    with export_mode(Precision.fp8):
        program = torch.export.export(fp8_cnn.eager, fp8_cnn.trace_inputs)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "tensorrt.quantize_op.default" in targets


def test_fp8_model_stays_close_to_fp32_when_calibrated(fp8_cnn: BuiltModel) -> None:
    assert fp8_cnn.reference is not None
    with torch.no_grad():
        (quantized,) = fp8_cnn.eager(*fp8_cnn.golden_inputs)
        (fp32,) = fp8_cnn.reference(*(t.float() for t in fp8_cnn.golden_inputs))
    assert torch.isfinite(quantized).all()
    cosine = torch.nn.functional.cosine_similarity(
        quantized.double().flatten(), fp32.double().flatten(), dim=0
    )
    assert cosine > 0.99


def test_calibration_is_reproducible_when_seed_is_the_same(tmp_path: Path, fp8_cnn: BuiltModel) -> None:
    again = build_model(_fp8_config(tmp_path), CPU)
    assert again.calibration is not None and fp8_cnn.calibration is not None
    assert again.calibration.to_json() == fp8_cnn.calibration.to_json()
    other = build_model(_fp8_config(tmp_path, "calibration.seed=5"), CPU)
    assert other.calibration is not None and other.calibration.amax != fp8_cnn.calibration.amax


def test_int8_weight_only_calibration_quantizes_weights_only_when_built_on_cpu(tmp_path: Path) -> None:
    built = build_model(
        config_for(tmp_path, "model=tiny_cnn", "precision=int8_weight_only", "calibration.samples=2"), CPU
    )
    assert built.calibration is not None and built.calibration.amax
    assert all(name.endswith("weight_quantizer") for name in built.calibration.amax)


def test_calibration_batch_size_is_used_when_first_dimension_is_dynamic(tmp_path: Path) -> None:
    built = build_model(_fp8_config(tmp_path, "calibration.batch_size=4"), CPU)
    assert (
        built.calibration is not None and built.calibration.batch_size == 4 and built.calibration.batches == 2
    )


def test_calibration_batch_size_is_refused_when_outside_the_inputs_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"calibration.batch_size=16: .* first dimension of 1\.\.8"):
        build_model(_fp8_config(tmp_path, "calibration.batch_size=16"), CPU)


def test_calibration_source_path_is_required_when_source_reads_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"calibration\.source\.path: required"):
        build_model(_fp8_config(tmp_path, "calibration=images"), CPU)


def test_image_folder_source_calibrates_when_folder_holds_images(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (40, 48), (index * 60, 30, 90)).save(folder / f"{index}.png")
    config = _fp8_config(
        tmp_path, "calibration=images", f"calibration.source.path={folder}", "calibration.source.size=32"
    )
    built = build_model(config, CPU)
    assert built.calibration is not None
    assert built.calibration.source == "pipeline.quantization.sources.image_folder"
    assert built.calibration.batches == 2  # 3 images in batches of 2 rows


@pytest.mark.parametrize(
    ("precision", "algorithm", "expected"),
    [("fp8", "smoothquant", "only for precision=int8"), ("int8", "awq_lite", "only for weight-only")],
)
def test_calibration_algorithm_is_refused_when_precision_cannot_use_it(
    precision: str, algorithm: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        modelopt_config(Precision(precision), CalibrationAlgorithm(algorithm))


def test_modelopt_cuda_extensions_fall_back_to_pytorch_kernels_when_no_cuda_compiler_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelopt.torch.quantization import extensions

    from pipeline.quantization import calibrate

    for name in ("get_cuda_ext", "get_cuda_ext_fp8", "get_cuda_ext_mx"):
        monkeypatch.delattr(getattr(extensions, name), "extension", raising=False)
    monkeypatch.setattr(calibrate, "cuda_compiler", lambda: "/usr/local/cuda/bin/nvcc")
    assert not calibrate.skip_modelopt_cuda_extensions_without_compiler()
    assert not hasattr(extensions.get_cuda_ext, "extension")  # ModelOpt may still build it

    monkeypatch.setattr(calibrate, "cuda_compiler", lambda: None)
    try:
        assert calibrate.skip_modelopt_cuda_extensions_without_compiler()
        # ModelOpt takes its cached entries at once: no compile attempt; PyTorch kernels instead.
        assert extensions.get_cuda_ext_fp8() is None
        int8 = extensions.get_cuda_ext()
        values = torch.tensor([[-1.0, 0.26, 0.5], [2.0, -0.6, 0.1]])
        per_tensor = int8.fake_tensor_quant(values, torch.tensor(1.0), 8, False, True)
        assert torch.allclose(per_tensor, (values.clamp(-1, 1) * 127).round() / 127)
        per_row = int8.fake_tensor_quant_with_axis(values, torch.tensor([1.0, 2.0]), 0, 8, False, True)
        expected = (values / torch.tensor([[1.0], [2.0]]) * 127).round().clamp(-127, 127) / 127
        assert torch.allclose(per_row, expected * torch.tensor([[1.0], [2.0]]))
    finally:
        for name in ("get_cuda_ext", "get_cuda_ext_fp8", "get_cuda_ext_mx"):
            if hasattr(getattr(extensions, name), "extension"):
                delattr(getattr(extensions, name), "extension")


def test_int8_fake_quant_falls_back_to_pytorch_when_modelopt_failed_to_build_its_extension() -> None:
    from modelopt.torch.quantization import extensions, tensor_quant

    from pipeline.quantization import calibrate

    had = hasattr(extensions.get_cuda_ext, "extension")
    previous = getattr(extensions.get_cuda_ext, "extension", None)
    extensions.get_cuda_ext.extension = None  # what ModelOpt caches after a failed build
    try:
        calibrate.use_pytorch_int8_kernel_if_extension_failed()
        weights = torch.randn(4, 6)
        amax = weights.abs().amax(dim=1, keepdim=True)  # per output channel, as ModelOpt keeps it
        # ModelOpt's own entry point (what tensorrt::quantize_op runs) now answers, as its CPU path does.
        assert torch.equal(
            tensor_quant.fake_quant_impl(weights, amax), tensor_quant._tensor_quant(weights, amax)
        )
    finally:
        if had:
            extensions.get_cuda_ext.extension = previous
        else:
            del extensions.get_cuda_ext.extension
