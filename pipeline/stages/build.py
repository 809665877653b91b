"""build: instantiate the model from its ``_target_``, load its weights, make the golden inputs."""

from __future__ import annotations

import copy
import difflib
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from pipeline.config.schema import (
    InputBinding,
    InputSpec,
    ModelConfig,
    PipelineConfig,
    Precision,
    WeightsConfig,
    WeightsSource,
)
from pipeline.errors import ConfigError, first_line
from pipeline.models import PositionalAdapter, make_inputs, state_dict_digest
from pipeline.models.shapes import shape_at, shape_sets, trace_sizes
from pipeline.models.weights import load_weights, read_state_dict
from pipeline.quantization.calibrate import CalibrationRecord, load_calibration_batches, quantize
from pipeline.quantization.precisions import model_dtype, spec_of
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
    #: The fp32 eager model, for the task-level check of reduced precisions (else None).
    reference: PositionalAdapter | None = None
    #: How a quantized model was calibrated, and its scales (else None).
    calibration: CalibrationRecord | None = None

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
    target = model.architecture["_target_"]
    try:
        factory = instantiate(model.architecture, _partial_=True)
    except InstantiationException as exc:
        raise (_import_error(exc) or exc) from exc
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


def _import_error(exc: InstantiationException) -> ConfigError | None:
    """One line for a ``_target_`` whose module cannot be imported: the cause and where to look.

    Hydra says only "Error locating target"; the ``ModuleNotFoundError`` is in its chained cause.
    """
    cause: BaseException | None = exc.__cause__
    while cause is not None and not isinstance(cause, ImportError):
        cause = cause.__cause__
    if cause is None:
        return None
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    named = re.search(r"Error loading '([^']+)'", lines[0]) if lines else None
    detail = next((line for line in lines if "Error" in line and not line.startswith("Error loading")), "")
    return ConfigError(
        f"model.architecture._target_: cannot import {named[1] if named else 'the target'!r} "
        f"({detail or (lines[0] if lines else type(cause).__name__)}); check the spelling, and put the "
        "directory holding your module on PYTHONPATH (e.g. PYTHONPATH=. python -m pipeline "
        "--config-dir myconf model=...)"
    )


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

    Reduced precisions keep an fp32 copy as the task-level reference; quantized ones are
    calibrated here (ModelOpt), and ``eager`` is then the simulated-quantization model.
    ``weights_sha256`` saves hashing the weights again when the caller already did.
    """
    names = [spec.name for spec in config.model.inputs]
    check_input_binding(model, names, config.model.bind_inputs)
    weights_sha256 = weights_sha256 or state_dict_digest(model)
    keyword = config.model.bind_inputs is InputBinding.keyword
    eager = PositionalAdapter(model, names, keyword=keyword).eval()
    precision = config.precision
    reference = None
    if config.verify.task_tolerance(precision) is not None:
        reference = copy.deepcopy(eager).float().to(device)
    if precision is not Precision.fp32:
        eager = eager.to(model_dtype(precision))
    eager = eager.to(device)
    specs, seed = config.model.inputs, config.verify.seed
    golden = make_inputs(specs, seed, precision, device)
    shape_inputs = {
        name: make_inputs(specs, seed, precision, device, sizes) for name, sizes in shape_sets(specs).items()
    }
    trace = trace_sizes(specs)
    retraced = any(shape_at(spec, trace) != list(spec.shape) for spec in specs)
    trace_inputs = make_inputs(specs, seed, precision, device, trace) if retraced else golden
    check_integer_ranges_fit(eager, golden, specs)
    calibration = None
    if spec_of(precision).quantized:
        batches = load_calibration_batches(config.model, config.calibration, precision, device)
        eager, calibration = quantize(eager, precision, config.calibration, batches)
    return BuiltModel(
        eager=eager,
        golden_inputs=golden,
        weights_sha256=weights_sha256,
        device=device,
        shape_inputs=shape_inputs,
        trace_inputs=trace_inputs,
        reference=reference,
        calibration=calibration,
    )


def check_integer_ranges_fit(
    eager: nn.Module, golden: tuple[torch.Tensor, ...], specs: Sequence[InputSpec]
) -> None:
    """Run the eager model once on the golden inputs, before anything compiles; if it indexes
    out of range, name the integer inputs whose declared values cause it (each one's values set
    to its ``low`` in turn: the inputs whose change makes the call pass)."""
    try:
        with torch.no_grad():
            eager(*golden)
    except IndexError as error:
        culprits = []
        for index, spec in enumerate(specs):
            if golden[index].dtype.is_floating_point:
                continue
            trial = list(golden)
            trial[index] = torch.full_like(golden[index], int(spec.low))
            try:
                with torch.no_grad():
                    eager(*trial)
            except IndexError:
                continue
            culprits.append(spec)
        if not culprits:
            raise
        named = ", ".join(f"model.inputs[{s.name}] draws from [{s.low:g}, {s.high:g})" for s in culprits)
        raise ConfigError(
            f"{named}: the model cannot index these values ({first_line(error)}); lower high to what "
            "the model accepts and declare max_value (e.g. vocab_size - 1)"
        ) from None


def build_model(config: PipelineConfig, device: torch.device) -> BuiltModel:
    """Build the eager model described by ``config.model``."""
    return prepare_model(instantiate_model(config.model), config, device)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def check_input_binding(model: nn.Module, names: Sequence[str], binding: InputBinding) -> None:
    """Refuse declared inputs that ``model.forward`` cannot take as ``binding`` passes them.

    Keyword binding needs every declared name to be a named parameter of ``forward`` (a
    ``**kwargs`` catch-all does not count: it would swallow a misspelled name silently) and every
    required parameter declared. Positional binding needs ``forward`` to take that many
    positional arguments. Raises :class:`ConfigError` with one line that names the input, the
    parameters of ``forward`` and, for a near miss, the name meant.
    """
    owner = f"{type(model).__name__}.forward"
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # no inspectable signature: nothing to check against
        return
    shown = ", ".join(_describe(p) for p in parameters) or "nothing"
    required = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if binding is InputBinding.positional:
        positional = [p for p in parameters if p.kind in _POSITIONAL]
        takes_varargs = any(p.kind is p.VAR_POSITIONAL for p in parameters)
        if not takes_varargs and len(names) > len(positional):
            raise ConfigError(
                f"model.bind_inputs=positional: {owner}({shown}) takes {len(positional)} positional "
                f"inputs, but model.inputs declares {len(names)} ({', '.join(names)})"
            )
        unfilled = [name for name in required if name not in {p.name for p in positional[: len(names)]}]
        if unfilled:
            raise ConfigError(
                f"model.bind_inputs=positional: {owner}({shown}) also requires {', '.join(unfilled)}, "
                f"which {len(names)} positional inputs ({', '.join(names)}) do not fill"
            )
        return
    by_name = [p.name for p in parameters if p.kind in _BY_NAME]
    if not by_name and any(p.kind is p.VAR_POSITIONAL for p in parameters):
        raise ConfigError(
            f"model.inputs: {owner}({shown}) takes its inputs by position only; "
            "set model.bind_inputs=positional to pass them in the declared order"
        )
    if not by_name and any(p.kind is p.VAR_KEYWORD for p in parameters):
        return  # forward(**inputs) takes any name, and asks for nothing by name
    for name in names:
        if name in by_name:
            continue
        hint = difflib.get_close_matches(name, by_name, n=1)
        did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
        extra = (
            f" ({len(names)} inputs declared for {len(by_name)} parameters: each input is one tensor "
            "parameter; wrap a model that takes a tuple)"
            if len(names) > len(by_name)
            else ""
        )
        raise ConfigError(
            f"model.inputs[{name}]: not a parameter of {owner}({shown}); {did_you_mean}"
            f"declare inputs under forward's parameter names, or set model.bind_inputs=positional "
            f"to pass them by position{extra}"
        )
    missing = [name for name in required if name not in names]
    if missing:
        raise ConfigError(
            f"model.inputs: {owner}({shown}) requires {', '.join(missing)}, which model.inputs "
            f"does not declare (declared: {', '.join(names)})"
        )


def _describe(parameter: inspect.Parameter) -> str:
    """A parameter as a signature shows it, without annotations or defaults' values."""
    if parameter.kind is parameter.VAR_POSITIONAL:
        return f"*{parameter.name}"
    if parameter.kind is parameter.VAR_KEYWORD:
        return f"**{parameter.name}"
    optional = "" if parameter.default is inspect.Parameter.empty else "=..."
    return f"{parameter.name}{optional}"
