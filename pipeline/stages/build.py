"""build: instantiate the model from its ``_target_``, load its weights, make the golden inputs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from hydra.utils import instantiate
from torch import nn

from pipeline.config.schema import (
    ModelConfig,
    PipelineConfig,
    Precision,
    WeightsConfig,
    WeightsSource,
)
from pipeline.errors import ConfigError
from pipeline.models import PositionalAdapter, make_inputs, state_dict_digest
from pipeline.models.shapes import shape_at, shape_sets, trace_sizes
from pipeline.models.weights import load_weights, read_state_dict
from pipeline.runtime.format import OPT_SET


@dataclass
class BuiltModel:
    """The eager model in its precision and on its device, ready to compile and compare against.

    ``golden_inputs`` are at the declared (opt) shape; ``shape_inputs`` hold one more golden set
    per other shape of a model with dynamic dimensions (min, max, odd; see
    :func:`pipeline.models.shapes.shape_sets`); ``trace_inputs`` are what compilers trace with.
    """

    eager: PositionalAdapter
    golden_inputs: tuple[torch.Tensor, ...]
    weights_sha256: str
    device: torch.device
    shape_inputs: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    trace_inputs: tuple[torch.Tensor, ...] = ()

    def golden_input_sets(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Every golden input set by name, the opt-shape one (``opt``) first."""
        return {OPT_SET: self.golden_inputs, **self.shape_inputs}


def instantiate_model(model: ModelConfig) -> nn.Module:
    """The model of ``model.architecture`` with ``model.weights``.

    A factory that takes ``weights`` as a :class:`WeightsConfig` (annotated so, or unannotated)
    handles them itself. Any other callable (a library constructor such as
    ``torchvision.models.mobilenet_v3_small`` or ``transformers.AutoModel.from_config``, a model
    class) is called without them, after seeding torch with ``weights.seed``; pretrained weights
    are then loaded from ``weights.name_or_path`` (a state-dict file, a ``.safetensors`` file or a
    ``save_pretrained`` directory), strictly, every mismatched name listed.

    Only for configs from this checkout's ``conf/`` (or ``--config-dir``): ``_target_`` names
    code to run.
    """
    # _partial_ lets Hydra resolve nested _target_ nodes while the weights config stays a dataclass.
    factory = instantiate(model.architecture, _partial_=True)
    target = model.architecture["_target_"]
    loads_own_weights = takes_weights_config(factory)
    if loads_own_weights:
        instance = factory(weights=model.weights)
    else:
        torch.manual_seed(model.weights.seed)
        instance = factory()
    if not isinstance(instance, nn.Module):
        raise TypeError(f"{target} returned {type(instance).__name__}, not an nn.Module")
    if not loads_own_weights and model.weights.source is WeightsSource.pretrained:
        if model.weights.name_or_path is None:
            raise ConfigError(
                f"model.weights.source=pretrained: {target} does not load weights itself; set "
                "model.weights.name_or_path to a state-dict, .safetensors or save_pretrained path"
            )
        source = model.weights.name_or_path
        load_weights(instance, read_state_dict(source), source, against=f"the model built by {target}")
    return instance.eval()


def takes_weights_config(factory: Callable[..., object]) -> bool:
    """True when ``factory`` declares a ``weights`` parameter meant for a :class:`WeightsConfig`."""
    try:
        parameter = inspect.signature(factory).parameters.get("weights")
    except (TypeError, ValueError):  # builtins without a signature
        return False
    if parameter is None or parameter.kind is inspect.Parameter.VAR_KEYWORD:
        return False
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty or annotation is WeightsConfig:
        return True
    return isinstance(annotation, str) and annotation.rsplit(".", 1)[-1] == WeightsConfig.__name__


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
    specs, seed, precision = config.model.inputs, config.verify.seed, config.precision
    golden = make_inputs(specs, seed, precision, device)
    shape_inputs = {
        name: make_inputs(specs, seed, precision, device, sizes) for name, sizes in shape_sets(specs).items()
    }
    trace = trace_sizes(specs)
    retraced = any(shape_at(spec, trace) != list(spec.shape) for spec in specs)
    trace_inputs = make_inputs(specs, seed, precision, device, trace) if retraced else golden
    return BuiltModel(
        eager=eager,
        golden_inputs=golden,
        weights_sha256=weights_sha256,
        device=device,
        shape_inputs=shape_inputs,
        trace_inputs=trace_inputs,
    )


def build_model(config: PipelineConfig, device: torch.device) -> BuiltModel:
    """Build the eager model described by ``config.model``."""
    return prepare_model(instantiate_model(config.model), config, device)
