"""Typed configuration schema.

Every YAML file under ``conf/`` is merged onto these dataclasses (registered in Hydra's
ConfigStore by :mod:`pipeline.config.store`), so a typo'd key or a badly typed value fails at
composition. The resolved config is converted once, with ``OmegaConf.to_object``, into a
:class:`PipelineConfig`; code below the entry point only ever sees these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

#: OmegaConf's marker for a value that must be given (its ``MISSING``), spelled out so that
#: deployment hosts can use these types without importing omegaconf.
MISSING: Any = "???"


class Precision(str, Enum):
    """Numeric precision the model is compiled and verified in.

    Member names equal their values because OmegaConf matches enum values by name.
    """

    fp32 = "fp32"
    fp16 = "fp16"


class BackendKind(str, Enum):
    """Which compiler turns the eager model into a deployable artifact."""

    auto = "auto"
    tensorrt = "tensorrt"
    export = "export"


class DeviceKind(str, Enum):
    """Where the model is built, compiled and verified."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    """Element type of a model input."""

    float32 = "float32"
    float16 = "float16"
    int32 = "int32"
    int64 = "int64"


class TilingLevel(str, Enum):
    """How long TensorRT searches for tiled kernels that keep data in L2 (TensorRT 10.8+, RTX)."""

    none = "none"
    fast = "fast"
    moderate = "moderate"
    full = "full"


class WeightsSource(str, Enum):
    """Where the model's weights come from."""

    random = "random"
    pretrained = "pretrained"


class InputBinding(str, Enum):
    """How the declared inputs reach the model's ``forward``.

    ``keyword`` calls ``forward(**{name: tensor})``: every declared name must be a parameter of
    ``forward``, so a misspelled name is refused instead of silently feeding another parameter.
    ``positional`` calls ``forward(*tensors)`` in declared order, for forwards that take
    ``*args`` only; the names then label the inputs and nothing more.
    """

    keyword = "keyword"
    positional = "positional"


class Stage(str, Enum):
    """Pipeline stages, in the order they run."""

    build = "build"
    compile = "compile"
    serialize = "serialize"
    reload = "reload"
    verify = "verify"
    bench = "bench"
    package = "package"


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
    """

    name: str = MISSING
    shape: list[int] = MISSING
    dtype: DType = DType.float32
    dims: list[str | None] | None = None
    min_shape: list[int] | None = None
    max_shape: list[int] | None = None
    low: float = 0.0
    high: float = 1.0


@dataclass
class DimRange:
    """The range of one named dynamic dimension: TensorRT's min/opt/max for it.

    ``opt`` (the size engines are tuned for, and the golden inputs') defaults to the size the
    inputs' ``shape`` gives that dimension.
    """

    min: int = MISSING
    max: int = MISSING
    opt: int | None = None


@dataclass
class WeightsConfig:
    """Weights provenance: seeded random initialisation, or a pretrained checkpoint."""

    source: WeightsSource = WeightsSource.random
    seed: int = 0
    # A Hugging Face hub id or a local directory (transformers), or a state-dict file (torchvision).
    name_or_path: str | None = None


@dataclass
class ModelConfig:
    """The model to compile: a ``_target_`` factory, its weights and its inputs."""

    name: str = MISSING
    # A Hydra ``_target_`` node; the factory takes ``weights`` (a WeightsConfig) plus these kwargs.
    architecture: Any = MISSING
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    inputs: list[InputSpec] = MISSING
    # Named dynamic dimensions (e.g. batch, seq) that inputs refer to in their ``dims``.
    dims: dict[str, DimRange] = field(default_factory=dict)
    # Inputs go to forward by name unless the user asks for positional binding explicitly.
    bind_inputs: InputBinding = InputBinding.keyword


@dataclass
class BackendConfig:
    """Compiler backend and device; ``auto`` picks TensorRT when a CUDA GPU and torch_tensorrt exist."""

    kind: BackendKind = BackendKind.auto
    device: DeviceKind = DeviceKind.auto


@dataclass
class CompileConfig:
    """Torch-TensorRT compile settings (names and defaults follow ``torch_tensorrt.dynamo._defaults``).

    The export backend ignores them; they are still recorded in the manifest.
    """

    lazy_engine_init: bool = False
    dynamically_allocate_resources: bool = False
    immutable_weights: bool = True
    min_block_size: int = 5
    optimization_level: int | None = None
    workspace_size: int = 0
    hardware_compatible: bool = False
    disable_tf32: bool = False
    truncate_double: bool = False
    # Kernel search settings that change the engine's speed, not its results.
    tiling_optimization_level: TilingLevel = TilingLevel.none
    l2_limit_for_tiling: int = -1
    # Attention: SDPA becomes one TensorRT IAttention layer unless decomposed into matmuls.
    decompose_attention: bool = False
    # Torch-TensorRT defaults this to True (rewrites every masked efficient-attention call as
    # causal, right for decoder LLMs only); False keeps encoders such as BERT correct.
    attn_bias_is_causal: bool = False


@dataclass
class RuntimeConfig:
    """Runtime policy applied to every TensorRT engine when a bundle is loaded.

    - ``pre_allocated_outputs``: reuse output buffers between calls (first seed).
    - ``dynamic_allocation``: engines allocate their execution memory per call and free it
      after (second seed); needs ``compile.dynamically_allocate_resources=true``.
    - ``cuda_graphs``: record and replay each engine's launch as a CUDA graph.
    """

    name: str = "standard"
    pre_allocated_outputs: bool = False
    dynamic_allocation: bool = False
    cuda_graphs: bool = False

    def is_default(self) -> bool:
        """True when this policy changes nothing from Torch-TensorRT's defaults."""
        return not (self.pre_allocated_outputs or self.dynamic_allocation or self.cuda_graphs)


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
class VerifyConfig:
    """How the reloaded artifact is checked against eager PyTorch."""

    random_input_sets: int = 3
    seed: int = 1234
    fp32: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-3, rtol=1e-2, min_cosine=0.9999))
    fp16: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-2, rtol=2e-2, min_cosine=0.999))

    def tolerance(self, precision: Precision) -> Tolerance:
        """The tolerance that applies to ``precision``."""
        return self.fp16 if precision is Precision.fp16 else self.fp32


class Baseline(str, Enum):
    """What the loaded bundle is compared against in the ``bench`` stage."""

    eager = "eager"
    inductor = "inductor"
    fresh = "fresh"


@dataclass
class BenchConfig:
    """Benchmark settings (the ``bench`` stage and ``python -m pipeline.bundle bench``).

    Every variant is timed side by side: ``rounds`` interleaved rounds of
    ``iterations / rounds`` calls each, after ``warmup`` untimed calls.
    """

    warmup: int = 50
    iterations: int = 200
    rounds: int = 5
    baselines: list[Baseline] = field(
        default_factory=lambda: [Baseline.eager, Baseline.inductor, Baseline.fresh]
    )
    # Further runtime presets to time on the same engines (one load each), e.g. [standard, cudagraphs].
    policies: list[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    """The whole, resolved pipeline configuration."""

    model: ModelConfig = MISSING
    precision: Precision = Precision.fp32
    backend: BackendConfig = field(default_factory=BackendConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    stages: list[Stage] = field(default_factory=lambda: [s for s in Stage if s is not Stage.bench])
    artifacts_dir: str = "artifacts"
    force: bool = False


@dataclass
class RefitConfig:
    """``python -m pipeline.refit``: put new weights into a bundle's engines without rebuilding them.

    ``weights`` is a state-dict file (``torch.save``), a ``.safetensors`` file, or a directory
    saved with ``save_pretrained``. The refitted bundle is published under ``artifacts_dir``.
    """

    bundle: str = MISSING
    weights: str = MISSING
    artifacts_dir: str = "artifacts"
    force: bool = False
