"""A digest of a model's weights, so that bundles say exactly which weights they hold."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
