"""Configuration: typed schema, ConfigStore registration and validation."""

from pipeline.config.loading import CONFIG_DIR, compose, parse, resolve, validate
from pipeline.config.schema import (
    BackendConfig,
    BackendKind,
    BenchConfig,
    CompileConfig,
    DeviceKind,
    DType,
    InputSpec,
    ModelConfig,
    PipelineConfig,
    Precision,
    RuntimeConfig,
    Stage,
    Tolerance,
    VerifyConfig,
    WeightsConfig,
    WeightsSource,
)
from pipeline.config.store import register_configs

__all__ = [
    "CONFIG_DIR",
    "BackendConfig",
    "BackendKind",
    "BenchConfig",
    "CompileConfig",
    "DType",
    "DeviceKind",
    "InputSpec",
    "ModelConfig",
    "PipelineConfig",
    "Precision",
    "RuntimeConfig",
    "Stage",
    "Tolerance",
    "VerifyConfig",
    "WeightsConfig",
    "WeightsSource",
    "compose",
    "parse",
    "register_configs",
    "resolve",
    "validate",
]
