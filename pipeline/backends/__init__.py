"""Backends behind one interface, and the choice between them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.backends.base import Backend, CompiledModel, RefitReport, RefitRequest
from pipeline.config.schema import BackendKind, DeviceKind
from pipeline.errors import BackendUnavailableError
from pipeline.runtime.base import ModelRuntime, SavedArtifact
from pipeline.runtime.policy import PolicyReport
from pipeline.runtime.tensorrt import tensorrt_unavailable_reason

__all__ = [
    "Backend",
    "BackendChoice",
    "CompiledModel",
    "ModelRuntime",
    "PolicyReport",
    "RefitReport",
    "RefitRequest",
    "SavedArtifact",
    "get_backend",
    "select_backend",
    "tensorrt_unavailable_reason",
]


@dataclass
class BackendChoice:
    """The backend to use, the device it runs on, and why it was chosen."""

    backend: Backend
    device: torch.device
    reason: str


def get_backend(kind: BackendKind) -> Backend:
    """Instantiate the backend of ``kind`` (``auto`` is resolved by :func:`select_backend`)."""
    if kind is BackendKind.tensorrt:
        from pipeline.backends.tensorrt import TensorRTBackend

        return TensorRTBackend()
    if kind is BackendKind.export:
        from pipeline.backends.export import ExportBackend

        return ExportBackend()
    raise ValueError(f"backend kind {kind.value} must be resolved first")


def select_backend(kind: BackendKind, device: DeviceKind) -> BackendChoice:
    """Resolve ``auto`` and check the host can run the chosen backend."""
    unavailable = tensorrt_unavailable_reason()
    if kind is BackendKind.auto:
        if unavailable is None:
            kind, reason = BackendKind.tensorrt, "a CUDA GPU and torch_tensorrt are present"
        else:
            kind, reason = BackendKind.export, f"TensorRT unavailable: {unavailable}"
    elif kind is BackendKind.tensorrt:
        if unavailable is not None:
            raise BackendUnavailableError(
                f"backend=tensorrt cannot run here: {unavailable}; use backend=export or auto"
            )
        reason = "requested"
    else:
        reason = "requested"
    if device is DeviceKind.cuda and not torch.cuda.is_available():
        raise BackendUnavailableError("backend.device=cuda but no CUDA GPU is visible")
    use_cuda = device is DeviceKind.cuda or (
        device is DeviceKind.auto and (kind is BackendKind.tensorrt or torch.cuda.is_available())
    )
    return BackendChoice(get_backend(kind), torch.device("cuda" if use_cuda else "cpu"), reason)
