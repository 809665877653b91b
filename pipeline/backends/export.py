"""The ``export`` backend: ``torch.export``, saved and reloaded as a .pt2 archive; runs on CPU."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from pipeline.backends.base import Backend, CompiledModel, SavedArtifact
from pipeline.backends.exported import dynamic_shapes
from pipeline.config.schema import InputSpec, PipelineConfig
from pipeline.runtime.exported import ExportRuntime


class ExportBackend(ExportRuntime, Backend):
    """Portable baseline: the exported program runs with PyTorch's own kernels."""

    model_file = "model/model.pt2"

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: PipelineConfig
    ) -> CompiledModel:
        program = torch.export.export(
            model, example_inputs, dynamic_shapes=dynamic_shapes(config.model.inputs)
        )
        return CompiledModel(module=program.module(), artifact=program, example_inputs=example_inputs)

    def save(self, compiled: CompiledModel, root: Path, specs: list[InputSpec]) -> SavedArtifact:
        target = root / self.model_file
        target.parent.mkdir(parents=True, exist_ok=True)
        # Into memory first, then one plain write: torch's archive writer aborts the process (a C++
        # exception in its destructor) when its own write to a full disk fails; this raises OSError.
        buffer = io.BytesIO()
        torch.export.save(compiled.artifact, buffer)
        target.write_bytes(buffer.getbuffer())
        return SavedArtifact(model_file=self.model_file)
