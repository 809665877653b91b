"""Runtime policy presets by name, read from ``conf/runtime/*.yaml`` (no Hydra composition).

Deployment code switches policies by name (``load_bundle(path, runtime="cudagraphs")``); the
presets it gets are the same files the pipeline composes.
"""

from __future__ import annotations

from pipeline.config.schema import RuntimeConfig
from pipeline.errors import ConfigError


def runtime_preset(name: str) -> RuntimeConfig:
    """The :class:`RuntimeConfig` of preset ``name``."""
    # Imported here: deployment code that keeps its bundle's recorded policy never needs them.
    from omegaconf import OmegaConf

    from pipeline.config.loading import CONFIG_DIR, runtime_names

    path = CONFIG_DIR / "runtime" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"runtime={name}: no such preset; available: {', '.join(runtime_names())}")
    preset = OmegaConf.load(path)
    node = OmegaConf.merge(OmegaConf.structured(RuntimeConfig), OmegaConf.select(preset, "runtime"))
    policy = OmegaConf.to_object(node)
    assert isinstance(policy, RuntimeConfig)
    return policy


def as_policy(runtime: RuntimeConfig | str) -> RuntimeConfig:
    """Accept a policy object or a preset name."""
    return runtime if isinstance(runtime, RuntimeConfig) else runtime_preset(runtime)
