"""Model weights: a digest that says exactly which weights a bundle holds, and reading new
weights from a file or directory with a check that they fit the model.

Loading weights (a pretrained checkpoint at build time, new weights for a refit) may change
values only: names and shapes must match the architecture exactly, so a mismatch is reported in
full (missing, unexpected and mis-shaped names) before any compile or GPU work starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.errors import ConfigError, WeightsMismatchError


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over every parameter and buffer: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# What ``save_pretrained`` writes, in the order transformers itself prefers them.
PRETRAINED_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SHOWN_NAMES = 8


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a state-dict file, a ``.safetensors`` file or a pretrained directory.

    Pickled files are read with ``weights_only=True``: tensors and containers, never code.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        for name in PRETRAINED_FILES:
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise ConfigError(
            f"weights={source}: a directory without weights; expected one of {', '.join(PRETRAINED_FILES)}"
        )
    if not path.is_file():
        raise ConfigError(f"weights={source}: no such file or directory")
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise ConfigError(f"weights={source}: not a readable safetensors file ({exc})") from None
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"weights={source}: not a readable state-dict file ({first_line})") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # training checkpoints nest the weights
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ConfigError(f"weights={source}: expected a mapping of names to tensors (a state dict)")
    return dict(loaded)


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"weights={index}: malformed shard index ({exc})") from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        if Path(shard).name != shard:
            raise ConfigError(f"weights={index}: shard {shard!r} is not a file beside the index")
        tensors.update(read_state_dict(index.parent / shard))
    return tensors


@dataclass
class WeightsMismatch:
    """How a state dict differs from a model's, name by name."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)

    def describe(self) -> str:
        """One line naming every kind of difference (the first few names of each)."""
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing {_names(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected {_names(self.unexpected)}")
        if self.misshaped:
            shown = [f"{name} {list(got)} vs model {list(want)}" for name, got, want in self.misshaped]
            parts.append(f"{len(self.misshaped)} mis-shaped {_names(shown)}")
        return "; ".join(parts)


def _names(names: list[str]) -> str:
    more = f", ... {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else ""
    return "[" + ", ".join(names[:_SHOWN_NAMES]) + more + "]"


def compare_state_dict(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> WeightsMismatch:
    """What stops ``weights`` from replacing every value of ``model.state_dict()`` one for one."""
    expected = model.state_dict()
    mismatch = WeightsMismatch(
        missing=sorted(set(expected) - set(weights)),
        unexpected=sorted(set(weights) - set(expected)),
    )
    for name in sorted(set(expected) & set(weights)):
        got, want = tuple(weights[name].shape), tuple(expected[name].shape)
        if got != want:
            mismatch.misshaped.append((name, got, want))
    return mismatch


def align_prefix(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a base-model prefix (``bert.`` in a task model's checkpoint) the model's names lack.

    transformers saves ``BertForSequenceClassification`` weights as ``bert.<name>``; loading
    them into the ``BertModel`` they contain is the same refit, so the prefix goes.
    """
    prefix = getattr(model, "base_model_prefix", "")
    expected = model.state_dict()
    if not prefix or any(name in expected for name in weights):
        return dict(weights)
    marker = prefix + "."
    return {name.removeprefix(marker): tensor for name, tensor in weights.items()}


def load_weights(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    source: str,
    against: str = "the bundle's architecture",
) -> None:
    """Copy ``weights`` into ``model`` (cast to each parameter's dtype) or raise naming every mismatch."""
    aligned = align_prefix(model, weights)
    mismatch = compare_state_dict(model, aligned)
    if mismatch:
        raise WeightsMismatchError(f"weights={source} do not match {against}: {mismatch.describe()}")
    expected = model.state_dict()
    model.load_state_dict({name: aligned[name].to(expected[name].dtype) for name in expected}, strict=True)
