"""Configuration: typed schema, ConfigStore registration and validation.

The schema types import nothing heavy; the Hydra-backed functions (``compose``, ``resolve``, ...)
are imported on first use, so deployment code that only needs the types never imports Hydra.
"""

from typing import TYPE_CHECKING, Any

from pipeline.config.schema import (
    BackendConfig,
    BackendKind,
    BenchConfig,
    CompileConfig,
    DeviceKind,
    DType,
    InputBinding,
    InputSpec,
    ModelConfig,
    Padding,
    PipelineConfig,
    Precision,
    RefitConfig,
    RuntimeConfig,
    Stage,
    TilingLevel,
    Tolerance,
    VerifyConfig,
    WeightsConfig,
    WeightsSource,
)

if TYPE_CHECKING:
    from pipeline.config.loading import (
        CONFIG_DIR,
        compose,
        config_dict,
        parse,
        resolve,
        resolve_refit,
        validate,
    )
    from pipeline.config.store import register_configs

_LAZY = {
    "CONFIG_DIR": "pipeline.config.loading",
    "compose": "pipeline.config.loading",
    "config_dict": "pipeline.config.loading",
    "parse": "pipeline.config.loading",
    "resolve": "pipeline.config.loading",
    "resolve_refit": "pipeline.config.loading",
    "validate": "pipeline.config.loading",
    "register_configs": "pipeline.config.store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.config' has no attribute {name!r}")


__all__ = [
    "CONFIG_DIR",
    "BackendConfig",
    "BackendKind",
    "BenchConfig",
    "CompileConfig",
    "DType",
    "DeviceKind",
    "InputBinding",
    "InputSpec",
    "ModelConfig",
    "Padding",
    "PipelineConfig",
    "Precision",
    "RefitConfig",
    "RuntimeConfig",
    "Stage",
    "TilingLevel",
    "Tolerance",
    "VerifyConfig",
    "WeightsConfig",
    "WeightsSource",
    "compose",
    "config_dict",
    "parse",
    "register_configs",
    "resolve",
    "resolve_refit",
    "validate",
]
