"""The ``export`` backend: ``torch.export``, saved and reloaded as a .pt2 archive; runs on CPU."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.backends.base import Backend, CompiledModel, PolicyReport
from pipeline.backends.exported import dynamic_shapes, flat_module
from pipeline.config.schema import BackendKind, InputSpec, PipelineConfig, RuntimeConfig
from pipeline.errors import BundleError


class ExportBackend(Backend):
    """Portable baseline: the exported program runs with PyTorch's own kernels."""

    kind = BackendKind.export
    artifact_name = "model.pt2"

    def environment(self) -> dict[str, str]:
        return {"torch": torch.__version__, "platform": platform.machine()}

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], config: PipelineConfig
    ) -> CompiledModel:
        program = torch.export.export(
            model, example_inputs, dynamic_shapes=dynamic_shapes(config.model.inputs)
        )
        return CompiledModel(module=program.module(), artifact=program, example_inputs=example_inputs)

    def save(self, compiled: CompiledModel, path: Path, specs: list[InputSpec]) -> None:
        torch.export.save(compiled.artifact, str(path))

    def load(self, path: Path, device: torch.device) -> nn.Module:
        return flat_module(torch.export.load(str(path)))

    def apply_policy(self, module: nn.Module, policy: RuntimeConfig) -> PolicyReport:
        if policy.is_default():
            return PolicyReport(policy=policy, applied=True)
        return PolicyReport(
            policy=policy,
            applied=False,
            reason=f"runtime={policy.name} configures TensorRT engines; the export backend has none",
        )

    def check_compatible(self, built_with: dict[str, str], compile_settings: dict[str, Any]) -> None:
        built = _major_minor(built_with.get("torch", ""))
        here = _major_minor(torch.__version__)
        if built and built > here:
            raise BundleError(
                f"bundle was exported with torch {built_with['torch']}, this host has "
                f"{torch.__version__}: an older torch cannot read it; upgrade torch or rebuild here"
            )


def _major_minor(version: str) -> tuple[int, ...]:
    parts = version.split("+")[0].split(".")[:2]
    return tuple(int(p) for p in parts if p.isdigit())
