"""reload: load the serialized model back exactly as deployment hosts will, policy applied."""

from __future__ import annotations

import torch

from pipeline.backends.base import Backend
from pipeline.config.schema import InputSpec, Precision, RuntimeConfig
from pipeline.runtime.loaded import LoadedModel
from pipeline.stages.serialize import SerializedModel


def reload_model(
    backend: Backend,
    serialized: SerializedModel,
    specs: list[InputSpec],
    precision: Precision,
    device: torch.device,
    policy: RuntimeConfig,
    expected_engines: int,
) -> LoadedModel:
    """Deserialize what was written and apply ``policy``; the engine count must be
    ``expected_engines`` (the fresh compile's, or the parent bundle's for a refit)."""
    artifact = backend.load(serialized.artifact, serialized.files, device, policy)
    return LoadedModel(
        module=artifact.module,
        executor=artifact.executor,
        specs=specs,
        precision=precision,
        device=device,
        policy=policy,
        expected_engines=expected_engines,
    )
