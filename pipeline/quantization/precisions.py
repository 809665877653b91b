"""What each precision sets (model dtype, ModelOpt config, compile settings) and needs (SM,
TensorRT build, ModelOpt); the checks that refuse a precision the host cannot build, before
any work."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.config.schema import BackendKind, PipelineConfig, Precision
from pipeline.errors import ConfigError
from pipeline.runtime.compat import version_tuple
from pipeline.runtime.types import activation_dtype

#: The ``tensorrt_build`` names :func:`pipeline.runtime.tensorrt.runtime_environment` reports.
STANDARD, RTX = "tensorrt", "tensorrt-rtx"


@dataclass(frozen=True)
class PrecisionSpec:
    """One precision: what it sets and what it needs.

    ``modelopt_config`` names a config of ``modelopt.torch.quantization`` (None: no
    quantization); ``int8_activations`` marks W8A8, which the RTX build of Torch-TensorRT 2.11
    refuses. ``min_sm`` is the lowest GPU architecture TensorRT supports it on;
    ``known_to_work`` the SMs each TensorRT build's support matrix lists (elsewhere it may
    still build: verification decides). ``refused`` is the reason a precision is not offered.
    """

    min_sm: tuple[int, int] = (0, 0)
    modelopt_config: str | None = None
    int8_activations: bool = False
    known_to_work: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    refused: str | None = None
    #: Why models with convolutions are refused on a TensorRT-RTX GPU its matrix does not list.
    convolutions_off_matrix: str | None = None

    @property
    def quantized(self) -> bool:
        """True when the model goes through ModelOpt (calibration, Q/DQ in the exported graph)."""
        return self.modelopt_config is not None


PRECISIONS: dict[Precision, PrecisionSpec] = {
    Precision.fp32: PrecisionSpec(),
    Precision.fp16: PrecisionSpec(min_sm=(5, 3)),
    Precision.bf16: PrecisionSpec(
        min_sm=(8, 0),
        known_to_work={STANDARD: ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0"), RTX: ("8.6", "8.9", "12.0")},
    ),
    Precision.fp8: PrecisionSpec(
        min_sm=(8, 9),
        modelopt_config="FP8_DEFAULT_CFG",
        known_to_work={STANDARD: ("8.9", "9.0", "10.0", "12.0"), RTX: ("8.9", "12.0")},
        convolutions_off_matrix="FP8 convolutions there gave NaN outputs (ResNet-50) or killed the "
        "process with a floating point exception in engine setup (a small conv net), seen on an H200",
    ),
    Precision.int8: PrecisionSpec(
        min_sm=(7, 5),
        modelopt_config="INT8_DEFAULT_CFG",
        int8_activations=True,
        known_to_work={STANDARD: ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")},
    ),
    Precision.int8_weight_only: PrecisionSpec(
        min_sm=(7, 5),
        modelopt_config="INT8_WEIGHT_ONLY_CFG",
        known_to_work={
            STANDARD: ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"),
            RTX: ("8.6", "8.9", "12.0"),
        },
    ),
    Precision.int4: PrecisionSpec(
        refused="INT4 (AWQ) is not offered: ModelOpt 0.47's INT4 export failed inside its quantizer "
        "without its CUDA extension, and TensorRT runs INT4 only as weight-only GEMMs for LLM decoders; "
        "use int8_weight_only or fp8"
    ),
    Precision.fp4: PrecisionSpec(
        refused="FP4 (NVFP4) is not offered: it needs a Blackwell GPU (SM 10.0 / 12.0) and was never "
        "built or verified here; use fp8"
    ),
}


def spec_of(precision: Precision) -> PrecisionSpec:
    """The :class:`PrecisionSpec` of ``precision``."""
    return PRECISIONS[precision]


def model_dtype(precision: Precision) -> torch.dtype:
    """The dtype the eager model is cast to before compiling (and calibrating)."""
    return activation_dtype(precision)


def modelopt_available() -> bool:
    """True when ModelOpt can be imported (nothing is imported)."""
    return importlib.util.find_spec("modelopt") is not None


def check_precision_request(config: PipelineConfig) -> None:
    """Refuse, before anything is built, a precision this pipeline cannot build anywhere or
    without a missing package: one line with the reason (:class:`ConfigError`)."""
    precision, spec = config.precision, spec_of(config.precision)
    if spec.refused is not None:
        raise ConfigError(f"precision={precision.value}: {spec.refused}")
    if not spec.quantized:
        return
    if config.backend.kind is BackendKind.export:
        raise ConfigError(
            f"precision={precision.value}: quantized graphs run only in TensorRT engines "
            "(backend=tensorrt); the export backend cannot run them"
        )
    if not modelopt_available():
        raise ConfigError(
            f"precision={precision.value}: needs NVIDIA ModelOpt for calibration; "
            "pip install '.[quant]' (nvidia-modelopt)"
        )


def check_precision_host(
    config: PipelineConfig, backend: BackendKind, environment: Mapping[str, str]
) -> str | None:
    """Refuse a precision the chosen backend and GPU cannot build (one line, :class:`ConfigError`).

    ``environment`` is the backend's (:func:`pipeline.runtime.tensorrt.runtime_environment`:
    ``sm``, ``tensorrt_build``, ``torch_tensorrt``). Returns a note when the GPU is off the
    build's support matrix for this precision (it may still work: verification decides), else None.
    """
    precision, spec = config.precision, spec_of(config.precision)
    if spec.quantized and backend is not BackendKind.tensorrt:
        raise ConfigError(
            f"precision={precision.value}: needs the tensorrt backend (a CUDA GPU and torch_tensorrt); "
            f"this run would use backend={backend.value}"
        )
    if backend is not BackendKind.tensorrt:
        return None
    sm_text = environment.get("sm", "0.0")
    sm = version_tuple(sm_text)
    if sm < spec.min_sm:
        raise ConfigError(
            f"precision={precision.value}: needs a GPU of SM >= {spec.min_sm[0]}.{spec.min_sm[1]}; "
            f"this one ({environment.get('gpu', 'unknown')}) is SM {sm_text}"
        )
    build = environment.get("tensorrt_build", "unknown")
    version = environment.get("torch_tensorrt", "0.0")
    if spec.int8_activations and build == RTX and version_tuple(version) < (2, 12):
        raise ConfigError(
            f"precision={precision.value}: torch-tensorrt-rtx {version} refuses INT8 activation "
            "quantization (validate_int8_activation_quantization; dropped in 2.12 for TensorRT-RTX 1.4); "
            "use int8_weight_only or fp8, or standard TensorRT"
        )
    listed = spec.known_to_work.get(build)
    if listed is not None and sm_text not in listed:
        refused = " (a model with convolutions is refused after it is built)" if build == RTX else ""
        return (
            f"precision={precision.value}: {build} lists it for SM {', '.join(listed)}, not SM {sm_text}; "
            f"building anyway, verification decides{refused if spec.convolutions_off_matrix else ''}"
        )
    if listed is None and spec.known_to_work:
        return f"precision={precision.value}: not listed for {build}; building anyway, verification decides"
    return None


def check_precision_model(config: PipelineConfig, environment: Mapping[str, str], model: nn.Module) -> None:
    """Refuse, after the eager model is built and before anything is compiled, a precision whose
    engines are known to fail for this kind of model on this host (one line, :class:`ConfigError`):
    TensorRT-RTX's FP8 convolutions on a GPU its support matrix does not list crash the process or
    return NaN, and a crash cannot be caught and reported like a failed verification."""
    precision, spec = config.precision, spec_of(config.precision)
    if spec.convolutions_off_matrix is None or environment.get("tensorrt_build") != RTX:
        return
    sm, listed = environment.get("sm", "unknown"), spec.known_to_work.get(RTX, ())
    if sm in listed or not any(isinstance(module, nn.modules.conv._ConvNd) for module in model.modules()):
        return
    raise ConfigError(
        f"precision={precision.value}: {config.model.name} has convolutions, and {RTX} supports "
        f"{precision.value} on SM {', '.join(listed)}, not SM {sm}: {spec.convolutions_off_matrix}; "
        "refused before compiling (use fp16 or bf16 here, or a GPU the matrix lists)"
    )
