"""The types a bundle's manifest declares: precision, backend, inputs and their dtypes, tolerances.

They live in the deployment runtime because loading a bundle needs them; the build side's
config schema (:mod:`pipeline.config.schema`) re-exports them, so YAML and manifests share one
definition. Nothing here imports more than torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

#: OmegaConf's marker for a value that must be given (its ``MISSING``), spelled out so that
#: deployment hosts can use these types without importing omegaconf.
MISSING: Any = "???"


class Precision(str, Enum):
    """Numeric precision the model is compiled and verified in.

    Member names equal their values because OmegaConf matches enum values by name.
    """

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    #: Post-training quantization through NVIDIA ModelOpt (calibrated; 16-bit elsewhere).
    fp8 = "fp8"
    int8 = "int8"
    int8_weight_only = "int8_weight_only"
    #: Named so that asking for them is refused with the reason (pipeline.quantization), not a
    #: bare "invalid value".
    int4 = "int4"
    fp4 = "fp4"


#: The dtype of a precision's floating activations (and so of its floating inputs): quantized
#: precisions quantize weights (and some activations) and run everything else in 16 bits.
_ACTIVATION_DTYPES: dict[Precision, torch.dtype] = {
    Precision.fp32: torch.float32,
    Precision.fp16: torch.float16,
    Precision.bf16: torch.bfloat16,
    Precision.fp8: torch.float16,
    Precision.int8: torch.float16,
    Precision.int8_weight_only: torch.float16,
    Precision.int4: torch.float16,
    Precision.fp4: torch.float16,
}


def activation_dtype(precision: Precision) -> torch.dtype:
    """The dtype the model's floating activations and inputs have at ``precision``."""
    return _ACTIVATION_DTYPES[precision]


class BackendKind(str, Enum):
    """Which compiler turns the eager model into a deployable artifact."""

    auto = "auto"
    tensorrt = "tensorrt"
    export = "export"


class DType(str, Enum):
    """Element type of a model input."""

    float32 = "float32"
    float16 = "float16"
    int32 = "int32"
    int64 = "int64"
    bool = "bool"


class Padding(str, Enum):
    """Which end of its last dimension a padding mask pads: an attention mask holds 1 (True) for
    each row's tokens and 0 (False) for the padding after them (``right``) or before them (``left``)."""

    right = "right"
    left = "left"


@dataclass
class InputSpec:
    """One model input: its name, shape, element type and the range random values are drawn from.

    ``shape`` is the shape of the golden and verification inputs (TensorRT's "opt" shape).
    Dynamic dimensions are declared by name in ``dims`` (one entry per dimension, ``null`` for a
    static one), each name ranging as :attr:`ModelConfig.dims` says; inputs that use one name
    share one dimension (BERT's ``batch`` and ``seq``). ``min_shape``/``max_shape`` are filled
    from those ranges when the config is validated; given without ``dims`` they make each
    differing dimension dynamic on its own.
    Integer inputs are drawn from ``[low, high)``, floating ones uniformly from ``[low, high]``.

    ``min_value``/``max_value`` (integer inputs, inclusive) are the values the model accepts at
    all, e.g. token ids ``0..vocab_size-1``: a loaded model refuses a call outside them (see
    ``RuntimeConfig.check_value_ranges``), where an out-of-range gather would read garbage on a
    GPU or poison the process's CUDA context.

    ``padding`` declares the input a padding mask over its last dimension (BERT's
    ``attention_mask``): golden and verification sets then hold padded rows, each row a random
    length of tokens (1s) and the rest padding (0s) on the declared side; in a batch of several
    rows the first is full-length, as in a batch padded to its longest sequence. ``low``/``high``
    do not apply to it. ``bool`` inputs are drawn as random True/False (or as a mask).
    """

    name: str = MISSING
    shape: list[int] = MISSING
    dtype: DType = DType.float32
    dims: list[str | None] | None = None
    min_shape: list[int] | None = None
    max_shape: list[int] | None = None
    low: float = 0.0
    high: float = 1.0
    min_value: int | None = None
    max_value: int | None = None
    padding: Padding | None = None


@dataclass
class Tolerance:
    """Pass criteria for one precision.

    An output passes when ``max_abs_error <= atol + rtol * max|reference|`` and its cosine
    similarity to the reference is at least ``min_cosine``.
    """

    atol: float = MISSING
    rtol: float = MISSING
    min_cosine: float = MISSING


@dataclass
class TaskTolerance:
    """Task-level agreement of a reduced-precision model with the fp32 eager model.

    ``min_cosine`` applies to every output; ``min_top1`` (the share of rows whose argmax
    agrees) to classifier outputs: 2-D outputs that are unnamed or named ``logits``.
    """

    min_cosine: float = MISSING
    min_top1: float = MISSING


_TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.float32: torch.float32,
    DType.float16: torch.float16,
    DType.int32: torch.int32,
    DType.int64: torch.int64,
    DType.bool: torch.bool,
}


def torch_dtype(dtype: DType, precision: Precision = Precision.fp32) -> torch.dtype:
    """The torch dtype of an input; floating inputs follow the run's precision."""
    resolved = _TORCH_DTYPES[dtype]
    if resolved.is_floating_point and precision is not Precision.fp32:
        return activation_dtype(precision)
    return resolved


def dim_names(spec: InputSpec) -> list[str | None]:
    """The name of each dimension of ``spec`` that varies, None for a static one."""
    low = spec.min_shape or spec.shape
    high = spec.max_shape or spec.shape
    names: list[str | None] = []
    for index, (lo, hi) in enumerate(zip(low, high, strict=True)):
        named = spec.dims[index] if spec.dims else None
        names.append(named if named else (f"{spec.name}_dim{index}" if lo != hi else None))
    return names
