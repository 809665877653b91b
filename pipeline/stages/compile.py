"""compile: hand the eager model to the chosen backend."""

from __future__ import annotations

import torch

from pipeline.backends.base import Backend, CompiledModel
from pipeline.config.schema import PipelineConfig
from pipeline.stages.build import BuiltModel


def compile_model(backend: Backend, built: BuiltModel, config: PipelineConfig) -> CompiledModel:
    """Compile ``built.eager`` for the golden inputs' shapes (and declared dynamic ranges)."""
    with torch.no_grad():
        return backend.compile(built.eager, built.golden_inputs, config)
