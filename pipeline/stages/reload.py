"""reload: load the serialized model back exactly as deployment hosts will, policy applied."""

from __future__ import annotations

import torch

from pipeline.backends.base import Backend, CompiledModel
from pipeline.config.schema import PipelineConfig, RuntimeConfig
from pipeline.runtime.loaded import LoadedModel
from pipeline.stages.serialize import SerializedModel


def reload_model(
    backend: Backend,
    serialized: SerializedModel,
    compiled: CompiledModel,
    config: PipelineConfig,
    device: torch.device,
    policy: RuntimeConfig | None = None,
) -> LoadedModel:
    """Deserialize and apply ``policy`` (default ``config.runtime``); engine counts must match
    the fresh compile."""
    module = backend.load(serialized.artifact, serialized.files, device)
    return LoadedModel(
        module=module,
        backend=backend,
        specs=config.model.inputs,
        precision=config.precision,
        device=device,
        policy=policy or config.runtime,
        expected_engines=compiled.engine_count,
    )
