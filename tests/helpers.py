"""Shared test helpers: run the pipeline in-process on tiny models, and odd models for edge cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import WeightsConfig, compose, resolve
from pipeline.config.schema import PipelineConfig
from pipeline.runner import RunResult, run_pipeline


def config_for(artifacts: Path, *overrides: str) -> PipelineConfig:
    """A resolved config with artifacts under ``artifacts`` and one random verification set."""
    return resolve(compose([f"artifacts_dir={artifacts}", "verify.random_input_sets=1", *overrides]))


def run(artifacts: Path, *overrides: str) -> RunResult:
    """Run the pipeline in-process."""
    return run_pipeline(config_for(artifacts, *overrides), list(overrides))


class NoisyModel(nn.Module):
    """Adds fresh noise on every call, so a compiled copy never matches eager PyTorch."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + torch.rand_like(images)


def noisy_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.noisy_model``."""
    return NoisyModel().eval()


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte of ``path`` (the middle one by default)."""
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))
