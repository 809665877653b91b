"""Model factories referenced by ``_target_`` in ``conf/model/*.yaml``.

Each factory takes the model's :class:`WeightsConfig` and returns an ``nn.Module`` in eval mode:
seeded random weights by default (works offline), or pretrained weights through the library's
own loader. Any other ``_target_`` with the same ``weights`` keyword works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config.schema import WeightsConfig, WeightsSource
from pipeline.errors import ConfigError
from pipeline.models.weights import load_weights, read_state_dict


def bert(weights: WeightsConfig, attn_implementation: str = "eager", **config: Any) -> nn.Module:
    """A transformers ``BertModel``: random from ``BertConfig(**config)`` or ``from_pretrained``.

    ``attn_implementation`` defaults to "eager": TensorRT-RTX fuses the SDPA form into a cuDNN
    attention graph that fails to build on Hopper (seen on an H200), while the eager form builds.
    """
    from transformers import BertConfig, BertModel

    if weights.source is WeightsSource.pretrained:
        try:
            return BertModel.from_pretrained(
                weights.name_or_path, attn_implementation=attn_implementation
            ).eval()
        except OSError as exc:
            raise ConfigError(
                f"model.weights.name_or_path={weights.name_or_path}: cannot load BERT weights "
                f"({str(exc).splitlines()[0]})"
            ) from None
    torch.manual_seed(weights.seed)
    bert_config = BertConfig(**config)
    bert_config._attn_implementation = attn_implementation
    return BertModel(bert_config).eval()


def torchvision_classifier(arch: str, weights: WeightsConfig, **kwargs: Any) -> nn.Module:
    """A torchvision classification model by name (``resnet50``, ``resnet152``, ...).

    Pretrained weights: ``name_or_path`` is a state-dict file saved with ``torch.save`` or a
    torchvision weights name such as ``IMAGENET1K_V2`` (which downloads).
    """
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.architecture.arch={arch}: not a torchvision classification model")
    torch.manual_seed(weights.seed)
    if weights.source is WeightsSource.random:
        return torchvision.models.get_model(arch, weights=None, **kwargs).eval()
    source = str(weights.name_or_path)
    if Path(source).is_file():
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        # The same strict load, naming every mismatch (exit 2), as for any user model.
        load_weights(model, read_state_dict(source), source, against=f"torchvision {arch}")
        return model.eval()
    return torchvision.models.get_model(arch, weights=source, **kwargs).eval()


class SmallConvNet(nn.Module):
    """Two conv blocks and a linear head: a CNN small enough for CPU tests."""

    def __init__(self, channels: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(images), 1))


def small_cnn(weights: WeightsConfig, channels: int = 8, num_classes: int = 10) -> nn.Module:
    """A :class:`SmallConvNet`; pretrained weights come from a state-dict file."""
    torch.manual_seed(weights.seed)
    model = SmallConvNet(channels, num_classes)
    if weights.source is WeightsSource.pretrained:
        source = str(weights.name_or_path)
        load_weights(model, read_state_dict(source), source, against="SmallConvNet")
    return model.eval()
