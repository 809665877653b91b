"""Shared test helpers: run the pipeline in-process on tiny models, and odd models for edge cases."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import RuntimeConfig, WeightsConfig, compose, resolve
from pipeline.config.schema import PipelineConfig
from pipeline.runner import RunResult, run_pipeline
from pipeline.runtime.format import FORMAT_VERSION, Manifest
from pipeline.runtime.policy import PolicyReport


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


class DataDependentModel(nn.Module):
    """Branches on a tensor's value, which torch.export cannot trace."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.sum() > 0:
            return images * 2
        return images


class TorchLoggingModel(DataDependentModel):
    """Logs through torch's own logger, as torch.export does around a failure, then fails export."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logging.getLogger("torch._export").warning("torch says: a warning for error.log")
        return super().forward(images)


def torch_logging_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.torch_logging_model``."""
    return TorchLoggingModel().eval()


def data_dependent_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.data_dependent_model``."""
    return DataDependentModel().eval()


def noisy_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.noisy_model``."""
    return NoisyModel().eval()


class NaNModel(nn.Module):
    """Returns NaN wherever its input is finite: no tolerance can make it pass."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * float("nan")


def nan_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.nan_model``."""
    return NaNModel().eval()


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte of ``path`` (the middle one by default)."""
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """Environment for running ``python -m pipeline...`` from the repository in a subprocess."""
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}


def python_snippet(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with ``python -c`` in a fresh process, from the repository."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=subprocess_env(),
        check=False,
    )


def cli(*args: str, cwd: Path = REPO, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ARGS`` from the repository, as a user would (``pythonpath``: one more
    directory to import from, e.g. the user's own models)."""
    env = subprocess_env()
    if pythonpath is not None:
        env["PYTHONPATH"] += os.pathsep + str(pythonpath)
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


def sample_manifest(**fields: Any) -> Manifest:
    """A well-formed manifest of an export bundle; ``fields`` override any value."""
    values: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "pipeline_version": "0.1.0",
        "bundle_id": "0" * 16,
        "created_at": "2026-11-22T00:00:00+00:00",
        "backend": "export",
        "device": "cpu",
        "precision": "fp32",
        "model_name": "tiny_cnn",
        "model_file": "model/model.pt2",
        "environment": {"torch": "2.14.1"},
        "config": {},
        "overrides": [],
        "compile_settings": {},
        "runtime": {"policy": {"name": "standard"}, "applied": True, "reason": ""},
        "inputs": [],
        "outputs": [],
        "verification": {"passed": True},
        "weights": {"source": "random"},
        "engine_count": 0,
    }
    values.update(fields)
    return Manifest(**values)


class DictOutputModel(nn.Module):
    """Returns a dict, as many user models do: names must survive into the loaded bundle."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.conv(images).mean(dim=(2, 3))
        return {"logits": self.head(features), "features": features}


def dict_output_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.dict_output_model``."""
    torch.manual_seed(weights.seed)
    return DictOutputModel().eval()


def tree_digest(root: Path) -> str:
    """One sha256 over every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class TiedOutputModel(nn.Module):
    """Returns one tensor under two names (tied outputs, as Hugging Face models do with aliases)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 8 * 8, 5)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(torch.flatten(images, 1))
        return {"logits": logits, "scores": logits, "hidden": images.mean(dim=1)}


def tied_output_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.tied_output_model``."""
    torch.manual_seed(weights.seed)
    return TiedOutputModel().eval()


#: ``SleepyModel`` sleeps this many seconds per call (default 0) and first touches the file
#: ``SLEEPY_MARKER`` names: a test knows when a stage is under way and can stop the process there.
SLEEPY_SECONDS, SLEEPY_MARKER = "PIPELINE_TEST_SLEEP_S", "PIPELINE_TEST_SLEEP_MARKER"


class SleepyModel(nn.Module):
    """A linear head that takes its time when called for real (not while being traced)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 8 * 8, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and not isinstance(images, torch._subclasses.FakeTensor):
            marker = os.environ.get(SLEEPY_MARKER)
            if marker:
                Path(marker).touch()
            time.sleep(float(os.environ.get(SLEEPY_SECONDS, "0")))
        return self.head(torch.flatten(images, 1))


def sleepy_model(weights: WeightsConfig, **architecture: Any) -> nn.Module:
    """Factory for ``model.architecture._target_=tests.helpers.sleepy_model``."""
    torch.manual_seed(weights.seed)
    return SleepyModel().eval()


#: Overrides that make ``tiny_cnn``'s config build :class:`SleepyModel` (3x8x8 images, batch 1..4).
SLEEPY = (
    "model=tiny_cnn",
    "model.name=sleepy",
    "model.architecture._target_=tests.helpers.sleepy_model",
    "~model.architecture.channels",
    "~model.architecture.num_classes",
    "model.inputs.0.shape=[2,3,8,8]",
    "model.inputs.0.min_shape=[1,3,8,8]",
    "model.inputs.0.max_shape=[4,3,8,8]",
)


class EagerAsLoaded:
    """Stands in for a loaded bundle in the bench: runs the eager module, its policy applied."""

    def __init__(self, module: nn.Module, policy: RuntimeConfig) -> None:
        self.module = module
        self.policy = policy
        self.policy_report = PolicyReport(policy=policy, applied=True)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        return self.module(*inputs)
