"""Typed configuration schema.

Every YAML file under ``conf/`` is merged onto these dataclasses (registered in Hydra's
ConfigStore by :mod:`pipeline.config.store`), so a typo'd key or a badly typed value fails at
composition. The resolved config is converted once, with ``OmegaConf.to_object``, into a
:class:`PipelineConfig`; code below the entry point only ever sees these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from pipeline.runtime.policy import RuntimeConfig
from pipeline.runtime.types import MISSING, BackendKind, InputSpec, Precision, TaskTolerance, Tolerance
from pipeline.runtime.types import DType as DType  # re-exported: the config schema names it
from pipeline.runtime.types import Padding as Padding


class Identity(str, Enum):
    """What a top-level config field decides; the one declaration of what an engine and a bundle are.

    Read (as field metadata, :func:`identity_of`) by the bundle id, the compile cache, the report
    and its rebuild command, so that they cannot drift apart.
    """

    #: Changes the compiled engines (and so every bundle made from them).
    engine = "engine"
    #: Changes what a bundle holds, not its engines (runtime policy, golden data, verification).
    bundle = "bundle"
    #: Part of a bundle only when the bench stage runs: its timings go into the signed manifest.
    bench = "bench"
    #: Where or whether things run; never part of any identity.
    run = "run"


IDENTITY_KEY = "identity"


def marked(kind: Identity) -> dict[str, Identity]:
    """Field metadata declaring what a field decides (``field(metadata=marked(Identity.engine))``)."""
    return {IDENTITY_KEY: kind}


class DeviceKind(str, Enum):
    """Where the model is built, compiled and verified."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


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


#: What each stage consumes: the output of the named stage (the order is :class:`Stage`'s).
STAGE_NEEDS: dict[Stage, Stage] = {
    Stage.compile: Stage.build,
    Stage.serialize: Stage.compile,
    Stage.reload: Stage.serialize,
    Stage.verify: Stage.reload,
    Stage.bench: Stage.reload,
    Stage.package: Stage.verify,
}


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


class CalibrationAlgorithm(str, Enum):
    """How ModelOpt turns calibration statistics into quantization scales (its ``algorithm``)."""

    max = "max"
    mse = "mse"
    smoothquant = "smoothquant"
    awq_lite = "awq_lite"


@dataclass
class CalibrationConfig:
    """The data a quantized precision (fp8, int8, int8_weight_only) is calibrated with.

    ``source`` is a Hydra ``_target_`` node naming a callable that takes a
    :class:`pipeline.quantization.sources.CalibrationRequest` (plus the node's own keyword
    arguments) and yields input tuples in the model's input order; the built-ins are in
    :mod:`pipeline.quantization.sources`. It is instantiated on the build side only, from this
    checkout's configs, never from a bundle. Ignored (and no part of any identity) by
    precisions that do not calibrate.
    """

    source: Any = field(default_factory=lambda: {"_target_": "pipeline.quantization.sources.random_inputs"})
    samples: int = 32
    # Rows per calibration batch when the inputs' first dimension is dynamic; null: their shape's.
    batch_size: int | None = None
    algorithm: CalibrationAlgorithm = CalibrationAlgorithm.max
    seed: int = 0


@dataclass
class VerifyConfig:
    """How the reloaded artifact is checked against eager PyTorch.

    Per precision, the tolerance against the eager model in that precision (for quantized
    precisions: ModelOpt's simulated quantization, the same scales; tight, it catches
    conversion bugs) and, in ``task``, the agreement required with the fp32 eager model.
    """

    random_input_sets: int = 3
    seed: int = 1234
    fp32: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-3, rtol=1e-2, min_cosine=0.9999))
    fp16: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-2, rtol=2e-2, min_cosine=0.999))
    bf16: Tolerance = field(default_factory=lambda: Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999))
    fp8: Tolerance = field(default_factory=lambda: Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999))
    int8: Tolerance = field(default_factory=lambda: Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999))
    int8_weight_only: Tolerance = field(
        default_factory=lambda: Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999)
    )
    task: dict[str, TaskTolerance] = field(default_factory=dict)

    def tolerance(self, precision: Precision) -> Tolerance:
        """The tolerance that applies to ``precision`` (fp32's for one without its own)."""
        found = getattr(self, precision.value, None)
        return found if isinstance(found, Tolerance) else self.fp32

    def task_tolerance(self, precision: Precision) -> TaskTolerance | None:
        """The agreement with fp32 eager required at ``precision``; None: no such check."""
        return self.task.get(precision.value)


class Baseline(str, Enum):
    """What the loaded bundle is compared against in the ``bench`` stage.

    ``eager`` and the ``inductor*`` members are the bundle's peers: what a user could serve
    instead. ``fresh`` is the same model compiled by Torch-TensorRT in the same process.
    """

    eager = "eager"
    #: ``torch.compile`` in its default mode.
    inductor = "inductor"
    #: ``torch.compile(mode="reduce-overhead")``: inductor with CUDA graphs (without them on CPU).
    inductor_reduce_overhead = "inductor_reduce_overhead"
    #: ``torch.compile(mode="max-autotune-no-cudagraphs")``: opt-in, its kernel search takes long.
    inductor_max_autotune = "inductor_max_autotune"
    fresh = "fresh"


@dataclass
class BenchConfig:
    """Benchmark settings (the ``bench`` stage and ``python -m pipeline.bundle bench``).

    Every variant is timed side by side: ``rounds`` interleaved rounds of
    ``iterations / rounds`` calls each, after ``warmup`` untimed calls and, on a GPU, at least
    ``warmup_s`` seconds of them: a GPU idling between processes clocks down (the H200 idles at
    345 of 1,980 MHz), and fifty calls of a millisecond are over before its clock has come up.
    """

    warmup: int = 50
    warmup_s: float = 1.0
    iterations: int = 200
    rounds: int = 5
    baselines: list[Baseline] = field(
        default_factory=lambda: [
            Baseline.eager,
            Baseline.inductor,
            Baseline.inductor_reduce_overhead,
            Baseline.fresh,
        ]
    )
    # Further runtime presets to time on the same engines (one load each), e.g. [standard, cudagraphs].
    policies: list[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    """The whole, resolved pipeline configuration.

    Every field is marked with the :class:`Identity` it has (a test keeps it so): a new field
    must say whether it changes engines, bundles, or only how the run goes.
    """

    model: ModelConfig = field(default=MISSING, metadata=marked(Identity.engine))
    precision: Precision = field(default=Precision.fp32, metadata=marked(Identity.engine))
    backend: BackendConfig = field(default_factory=BackendConfig, metadata=marked(Identity.engine))
    compile: CompileConfig = field(default_factory=CompileConfig, metadata=marked(Identity.engine))
    # Part of the engines' identity only for precisions that calibrate (pipeline.identity).
    calibration: CalibrationConfig = field(
        default_factory=CalibrationConfig, metadata=marked(Identity.engine)
    )
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata=marked(Identity.bundle))
    verify: VerifyConfig = field(default_factory=VerifyConfig, metadata=marked(Identity.bundle))
    bench: BenchConfig = field(default_factory=BenchConfig, metadata=marked(Identity.bench))
    stages: list[Stage] = field(
        default_factory=lambda: [s for s in Stage if s is not Stage.bench], metadata=marked(Identity.run)
    )
    artifacts_dir: str = field(default="artifacts", metadata=marked(Identity.run))
    force: bool = field(default=False, metadata=marked(Identity.run))


def identity_of(name: str) -> Identity:
    """The :class:`Identity` of top-level config key ``name`` (unknown keys: :attr:`Identity.run`)."""
    for item in fields(PipelineConfig):
        if item.name == name:
            return Identity(item.metadata[IDENTITY_KEY])
    return Identity.run


def keys_of(*kinds: Identity) -> list[str]:
    """The top-level config keys marked with one of ``kinds``, in schema order."""
    return [item.name for item in fields(PipelineConfig) if item.metadata.get(IDENTITY_KEY) in kinds]


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
