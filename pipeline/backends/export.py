"""The ``export`` backend: ``torch.export``, saved and reloaded as a .pt2 archive; runs on CPU."""

from __future__ import annotations

import io
import platform
from pathlib import Path

import torch
from torch import nn

from pipeline.backends.base import Backend, CompiledModel, FileSource, PolicyReport, SavedArtifact
from pipeline.backends.exported import dynamic_shapes, flat_module
from pipeline.config.schema import BackendKind, InputSpec, PipelineConfig, RuntimeConfig


class ExportBackend(Backend):
    """Portable baseline: the exported program runs with PyTorch's own kernels."""

    kind = BackendKind.export
    model_file = "model/model.pt2"

    def environment(self) -> dict[str, str]:
        return {"torch": torch.__version__, "platform": platform.machine()}

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
        torch.export.save(compiled.artifact, str(target))
        return SavedArtifact(model_file=self.model_file)

    def load(self, artifact: SavedArtifact, files: FileSource, device: torch.device) -> nn.Module:
        return flat_module(torch.export.load(io.BytesIO(files.read(artifact.model_file))))

    def apply_policy(self, module: nn.Module, policy: RuntimeConfig) -> PolicyReport:
        if policy.is_default():
            return PolicyReport(policy=policy, applied=True)
        return PolicyReport(
            policy=policy,
            applied=False,
            reason=f"runtime={policy.name} configures TensorRT engines; the export backend has none",
        )
