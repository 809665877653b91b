"""build: instantiate the model from its ``_target_``, load its weights, make the golden inputs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from torch import nn

from pipeline.config.schema import ModelConfig, PipelineConfig, Precision
from pipeline.models import PositionalAdapter, make_inputs, state_dict_digest


@dataclass
class BuiltModel:
    """The eager model in its precision and on its device, ready to compile and compare against."""

    eager: nn.Module
    golden_inputs: tuple[torch.Tensor, ...]
    weights_sha256: str
    device: torch.device


def instantiate_model(model: ModelConfig) -> nn.Module:
    """The model of ``model.architecture`` with ``model.weights``, as its factory returns it.

    Only for configs from this checkout's ``conf/``: ``_target_`` names code to run.
    """
    # _partial_ lets Hydra resolve nested _target_ nodes while the weights config stays a dataclass.
    factory = instantiate(model.architecture, _partial_=True)
    instance = factory(weights=model.weights)
    if not isinstance(instance, nn.Module):
        raise TypeError(
            f"{model.architecture['_target_']} returned {type(instance).__name__}, not an nn.Module"
        )
    return instance


def prepare_model(
    model: nn.Module, config: PipelineConfig, device: torch.device, weights_sha256: str | None = None
) -> BuiltModel:
    """Wrap ``model`` in the positional calling form, cast it to the precision, make golden inputs.

    ``weights_sha256`` saves hashing the weights again when the caller already did.
    """
    weights_sha256 = weights_sha256 or state_dict_digest(model)
    names = [spec.name for spec in config.model.inputs]
    parameters = inspect.signature(model.forward).parameters
    keyword = all(name in parameters for name in names)
    eager = PositionalAdapter(model, names, keyword=keyword).eval()
    if config.precision is Precision.fp16:
        eager = eager.half()
    eager = eager.to(device)
    golden = make_inputs(config.model.inputs, config.verify.seed, config.precision, device)
    return BuiltModel(eager=eager, golden_inputs=golden, weights_sha256=weights_sha256, device=device)


def build_model(config: PipelineConfig, device: torch.device) -> BuiltModel:
    """Build the eager model described by ``config.model``."""
    return prepare_model(instantiate_model(config.model), config, device)
