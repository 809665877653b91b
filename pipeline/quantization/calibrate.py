"""Post-training quantization with NVIDIA ModelOpt: calibrate, record the scales, export.

The quantized model ModelOpt returns simulates the quantization in PyTorch ("fake quant"): it
is both what gets exported (its quantizers become ``tensorrt.quantize_op`` nodes, which
Torch-TensorRT turns into Q/DQ layers) and the tight reference the engine is verified against.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import torch
from hydra.utils import instantiate
from torch import nn

from pipeline.config.schema import CalibrationAlgorithm, CalibrationConfig, ModelConfig, Precision
from pipeline.environment import package_version
from pipeline.errors import ConfigError
from pipeline.quantization.precisions import spec_of
from pipeline.quantization.sources import CalibrationRequest, calibration_batch_size, take

M = TypeVar("M", bound=nn.Module)


def _mtq() -> Any:
    import modelopt.torch.quantization as mtq

    skip_modelopt_cuda_extensions_without_compiler()
    return mtq


#: ModelOpt's CUDA extensions (fake-quant kernels), compiled on first use with nvcc.
_MODELOPT_EXTENSIONS = ("get_cuda_ext", "get_cuda_ext_fp8", "get_cuda_ext_mx")


def cuda_compiler() -> str | None:
    """The ``nvcc`` torch's extension builder would use (under its ``CUDA_HOME``); None if absent."""
    from pathlib import Path

    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME  # CUDA_HOME / CUDA_PATH, else found from nvcc on PATH
    nvcc = Path(home) / "bin" / "nvcc" if home else None
    return str(nvcc) if nvcc is not None and nvcc.is_file() else None


class _PyTorchFakeQuant:
    """Stands in for ModelOpt's INT8 CUDA extension where it cannot be built: the same two entry
    points over ModelOpt's own PyTorch fake quantization (``_tensor_quant``, its CPU path).
    Without it, ``tensorrt::quantize_op`` fails whenever it really runs on a GPU tensor (Torch-
    TensorRT folds the weight quantizers of ``int8_weight_only``: seen on the GPU host)."""

    def __bool__(self) -> bool:
        # ModelOpt's INT4/NF4 code asks `if cuda_ext and ...` for kernels this does not have.
        return False

    @staticmethod
    def fake_tensor_quant(
        inputs: torch.Tensor, amax: torch.Tensor, num_bits: int, unsigned: bool, narrow_range: bool
    ) -> torch.Tensor:
        from modelopt.torch.quantization.tensor_quant import _tensor_quant

        return _tensor_quant(inputs, amax, num_bits, unsigned, narrow_range)

    @staticmethod
    def fake_tensor_quant_with_axis(
        inputs: torch.Tensor, amax: torch.Tensor, axis: int, num_bits: int, unsigned: bool, narrow_range: bool
    ) -> torch.Tensor:
        shape = [1] * inputs.dim()
        shape[axis] = amax.numel()  # per-channel scales broadcast along ``axis``
        return _PyTorchFakeQuant.fake_tensor_quant(
            inputs, amax.reshape(shape), num_bits, unsigned, narrow_range
        )


def use_pytorch_int8_kernel_if_extension_failed() -> None:
    """Where ModelOpt tried to build its INT8 extension and failed (nvcc present, but no C++
    compiler, another CUDA, a wrong ``CUDA_HOME``), it cached None: put the PyTorch stand-in in
    its place before export and compile, which run ``tensorrt::quantize_op`` for real."""
    from modelopt.torch.quantization import extensions

    if getattr(extensions.get_cuda_ext, "extension", False) is None:
        extensions.get_cuda_ext.extension = _PyTorchFakeQuant()


def skip_modelopt_cuda_extensions_without_compiler() -> bool:
    """Without nvcc, ModelOpt would still try to build its CUDA extensions on first use (minutes
    compiling their C++ half before failing, seen on the GPU host) and then has no INT8 kernel for
    ``tensorrt::quantize_op``; so, up front, the FP8 and MX ones are marked unavailable (ModelOpt
    falls back to PyTorch itself) and the INT8 one is :class:`_PyTorchFakeQuant`. Export is
    unaffected: it traces the op's fake kernel. True when there is no compiler (nothing is
    replaced that ModelOpt already loaded or tried)."""
    if cuda_compiler() is not None:
        return False
    from modelopt.torch.quantization import extensions

    for name in _MODELOPT_EXTENSIONS:
        getter = getattr(extensions, name, None)
        if getter is not None and not hasattr(getter, "extension"):
            # ModelOpt's own cache of the loaded extension, read before it tries to build one.
            getter.extension = _PyTorchFakeQuant() if name == "get_cuda_ext" else None
    return True


@dataclass
class CalibrationRecord:
    """How a quantized model was calibrated and the scales it got: written beside the engines
    (``calibration.json``), so a quantized bundle can be rebuilt and checked."""

    precision: str
    modelopt_config: str
    algorithm: str
    source: str
    samples: int
    batches: int
    batch_size: int
    seed: int
    modelopt_version: str
    #: Each enabled quantizer's amax (a number, or a nested list for per-channel scales).
    amax: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def modelopt_config(precision: Precision, algorithm: CalibrationAlgorithm) -> tuple[str, dict[str, Any]]:
    """The ModelOpt config (its name and a private copy) for ``precision`` with ``algorithm``."""
    spec = spec_of(precision)
    if spec.modelopt_config is None:
        raise ValueError(f"precision={precision.value} is not quantized")
    name = spec.modelopt_config
    if algorithm is CalibrationAlgorithm.smoothquant:
        if precision is not Precision.int8:
            raise ConfigError(
                f"calibration.algorithm=smoothquant: only for precision=int8 (W8A8), not {precision.value}"
            )
        name = "INT8_SMOOTHQUANT_CFG"
    if algorithm is CalibrationAlgorithm.awq_lite and precision is not Precision.int8_weight_only:
        raise ConfigError(
            f"calibration.algorithm=awq_lite: only for weight-only quantization "
            f"(precision=int8_weight_only), not {precision.value}"
        )
    config = copy.deepcopy(getattr(_mtq(), name))
    if algorithm is not CalibrationAlgorithm.smoothquant:
        config["algorithm"] = algorithm.value
    return name, config


def calibration_request(
    model: ModelConfig, calibration: CalibrationConfig, precision: Precision, device: torch.device
) -> CalibrationRequest:
    """The request handed to the calibration source."""
    return CalibrationRequest(
        model=model,
        specs=model.inputs,
        samples=calibration.samples,
        batch_size=calibration_batch_size(model.inputs, calibration.batch_size),
        seed=calibration.seed,
        precision=precision,
        device=device,
    )


def load_calibration_batches(
    model: ModelConfig, calibration: CalibrationConfig, precision: Precision, device: torch.device
) -> list[tuple[torch.Tensor, ...]]:
    """The calibration batches from ``calibration.source`` (a ``_target_`` of this checkout's
    configs; never instantiated from a bundle)."""
    if calibration.samples < 1:
        raise ConfigError(f"calibration.samples={calibration.samples}: must be at least 1")
    request = calibration_request(model, calibration, precision, device)
    source = instantiate(calibration.source, _partial_=True)
    batches = take(source(request=request), request.batches)
    if not batches:
        raise ConfigError(f"calibration.source {calibration.source.get('_target_')}: gave no batches")
    return batches


def quantize(
    model: M,
    precision: Precision,
    calibration: CalibrationConfig,
    batches: list[tuple[torch.Tensor, ...]],
) -> tuple[M, CalibrationRecord]:
    """Quantize ``model`` in place with ModelOpt, calibrated on ``batches``; returns the
    simulated-quantization model and the record of its scales."""
    name, config = modelopt_config(precision, calibration.algorithm)

    def forward_loop(quantized: nn.Module) -> None:
        for batch in batches:
            quantized(*batch)

    with torch.no_grad():
        _mtq().quantize(model, config, forward_loop)  # in place: the same module comes back
    quantized = model
    record = CalibrationRecord(
        precision=precision.value,
        modelopt_config=name,
        algorithm=calibration.algorithm.value,
        source=str(calibration.source.get("_target_", "")),
        samples=calibration.samples,
        batches=len(batches),
        batch_size=int(batches[0][0].shape[0]) if batches[0] and batches[0][0].dim() else 1,
        seed=calibration.seed,
        modelopt_version=package_version("nvidia-modelopt"),
        amax=quantizer_amax(quantized),
    )
    return quantized.eval(), record


def quantizer_amax(model: nn.Module) -> dict[str, Any]:
    """Each enabled quantizer's calibrated amax, by module name."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    found: dict[str, Any] = {}
    for name, module in model.named_modules():
        if not isinstance(module, TensorQuantizer) or not module.is_enabled:
            continue
        amax = getattr(module, "amax", None)
        if isinstance(amax, torch.Tensor):
            values = amax.detach().float().cpu()
            found[name] = values.item() if values.numel() == 1 else values.tolist()
    return found


@contextlib.contextmanager
def export_mode(precision: Precision) -> Iterator[None]:
    """Where a quantized model is exported: ModelOpt's quantizers turn into TensorRT Q/DQ ops."""
    if not spec_of(precision).quantized:
        yield
        return
    from modelopt.torch.quantization.utils import export_torch_mode

    use_pytorch_int8_kernel_if_extension_failed()
    with export_torch_mode():
        yield
