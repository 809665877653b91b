"""Composition, conversion to the typed schema, and validation with one-line errors.

Hydra reports composition problems as multi-line messages with exit code 1. Users of this tool
(and CI jobs that grep logs) get one line naming the key and what is allowed, and exit code 2:
:func:`compose` turns Hydra's and OmegaConf's exceptions into :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml
from hydra import compose as hydra_compose
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import MISSING as OMEGACONF_MISSING
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.schema import (
    STAGE_NEEDS,
    BackendKind,
    DeviceKind,
    DType,
    InputSpec,
    ModelConfig,
    PipelineConfig,
    RefitConfig,
    Stage,
    WeightsSource,
)
from pipeline.config.store import register_configs
from pipeline.errors import ConfigError

SchemaT = TypeVar("SchemaT")


def _config_dir() -> Path:
    """The config groups: shipped inside the package by a wheel (``pipeline/conf``), or at the
    top of the repository in a checkout (``conf/``, also for editable installs)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(f"no config groups found in {package / 'conf'} or {package.parent / 'conf'}")


CONFIG_DIR = _config_dir()
CONFIG_NAME = "config"
REFIT_CONFIG_NAME = "refit"
# The schema dataclass at the root of each primary config, for error messages.
_ROOTS: dict[str, type] = {CONFIG_NAME: PipelineConfig, REFIT_CONFIG_NAME: RefitConfig}


def compose(
    overrides: Sequence[str] = (), config_name: str = CONFIG_NAME, config_dirs: Sequence[str | Path] = ()
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style ``overrides``.

    ``config_dirs`` are searched before ``conf/``, as ``--config-dir`` makes Hydra do (a user's
    own ``model/*.yaml``). Raises :class:`ConfigError` with a one-line message for an unknown
    group option, an unknown key or a value of the wrong type (naming the YAML file when the
    mistake is in one) and for a YAML syntax error (file, line and column).
    """
    register_configs()
    GlobalHydra.instance().clear()
    search_path = create_config_search_path(str(CONFIG_DIR))
    user_dirs = [Path(directory).resolve() for directory in config_dirs]
    for directory in reversed(user_dirs):
        search_path.prepend(provider="command-line", path=f"file://{directory}")
    Hydra.create_main_hydra2(task_name="pipeline", config_search_path=search_path)
    try:
        return hydra_compose(config_name=config_name, overrides=list(overrides))
    except MissingConfigException as exc:
        raise _missing_option_error(exc, user_dirs) from None
    except ConfigCompositionException as exc:
        in_file = _config_file_error(str(exc), [*user_dirs, CONFIG_DIR])
        raise (in_file or _composition_error(exc, _ROOTS[config_name])) from None
    except OmegaConfBaseException as exc:
        raise _composition_error(exc, _ROOTS[config_name]) from None
    except yaml.YAMLError as exc:
        raise _yaml_syntax_error(exc) from None
    finally:
        GlobalHydra.instance().clear()


def parse(data: Mapping[str, Any]) -> PipelineConfig:
    """Merge plain data (e.g. a bundle's ``config.yaml``) onto the schema, convert and validate.

    Never instantiates anything; raises only :class:`ConfigError` for bad data.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    _check_plain_types(data, PipelineConfig, "")
    try:
        merged = OmegaConf.merge(_schema(), dict(data))
    except (OmegaConfBaseException, ValueError, TypeError, RecursionError) as exc:
        raise _composition_error(exc) from None
    if not isinstance(merged, DictConfig):
        raise ConfigError("a config must be a mapping")
    try:
        return resolve(merged)
    except (TypeError, ValueError, AttributeError) as exc:
        # OmegaConf lets some ill-typed nested values through; they fail in validation instead.
        raise ConfigError(f"malformed config: {exc}") from None


@functools.cache
def _field_types(node: type) -> dict[str, Any]:
    return get_type_hints(node)


def _check_plain_types(value: Any, hint: Any, path: str) -> None:
    """Refuse plain data whose scalars are not of the schema's type.

    OmegaConf converts what it can (``False`` into the string ``'False'``, ``"5"`` into 5,
    ``1`` into True): right for command-line text, wrong for data that is already typed (a
    bundle's config), where it would accept a config that does not say what it was given. An
    int where a float is expected is the one widening allowed; keys the schema does not know are
    left to the merge, which names them.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next((arg for arg in args if arg is not type(None)), Any)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or value is None:
        return
    if isinstance(value, str) and value == OMEGACONF_MISSING:
        # OmegaConf's "missing" marker: merged onto a field with a default, the default would win.
        raise ConfigError(f"{path}: a value is required")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, Mapping):
            hints = _field_types(hint)
            for key, item in value.items():
                if key in hints:
                    _check_plain_types(item, hints[key], f"{path}.{key}".lstrip("."))
        return
    if origin is list and isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain_types(item, args[0] if args else Any, f"{path}[{index}]")
        return
    if origin is dict and isinstance(value, Mapping):
        for key, item in value.items():
            _check_plain_types(item, args[1] if len(args) == 2 else Any, f"{path}.{key}")
        return
    expected = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}.get(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        expected = (str, hint)
    if expected is not None and (
        not isinstance(value, expected) or (hint is not bool and isinstance(value, bool))
    ):
        wanted = (
            hint.__name__
            if not isinstance(hint, type) or not issubclass(hint, enum.Enum)
            else "one of its names"
        )
        raise ConfigError(f"{path}: expected {wanted}, got {type(value).__name__} {value!r}")


@functools.cache
def _schema() -> DictConfig:
    # Building the structured node is most of parse()'s cost; merge() copies it, never mutates it.
    return OmegaConf.structured(PipelineConfig)


def resolve(cfg: DictConfig) -> PipelineConfig:
    """Convert a composed config to the typed :class:`PipelineConfig` and validate it."""
    config = _to_schema(cfg, PipelineConfig)
    validate(config)
    return config


def resolve_refit(cfg: DictConfig) -> RefitConfig:
    """Convert a composed ``conf/refit.yaml`` to the typed :class:`RefitConfig`."""
    return _to_schema(cfg, RefitConfig)


def _to_schema(cfg: DictConfig, root: type[SchemaT]) -> SchemaT:
    try:
        config = OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise _composition_error(exc, root) from None
    if not isinstance(config, root):
        raise ConfigError(f"the config root is {type(config).__name__}, expected {root.__name__}")
    return config


def config_dict(config: PipelineConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-ready data (enums as their values)."""
    container = OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def validate(config: PipelineConfig) -> None:
    """Reject values and combinations that cannot run, naming the key and what is allowed."""
    _validate_model(config)
    _validate_compile_and_runtime(config)
    _validate_stages(config.stages)
    if config.verify.random_input_sets < 0:
        raise ConfigError("verify.random_input_sets must be >= 0")
    for name in ("fp32", "fp16"):
        tol = getattr(config.verify, name)
        # Written as what must hold, so that NaN (for which every comparison is false) fails it.
        if not (0 <= tol.atol < math.inf and 0 <= tol.rtol < math.inf and -1.0 <= tol.min_cosine <= 1.0):
            raise ConfigError(f"verify.{name}: atol and rtol must be finite and >= 0, min_cosine in [-1, 1]")
    if config.bench.warmup < 0 or config.bench.iterations < 1 or config.bench.rounds < 1:
        raise ConfigError("bench.warmup must be >= 0, bench.iterations and bench.rounds >= 1")
    if not 0 <= config.bench.warmup_s <= 600:  # NaN fails this too
        raise ConfigError(f"bench.warmup_s must be between 0 and 600 seconds, not {config.bench.warmup_s}")
    if not all(isinstance(name, str) for name in config.bench.policies):
        raise ConfigError("bench.policies must list runtime preset names")
    unknown = sorted(set(config.bench.policies) - set(runtime_names()))
    if unknown:
        raise ConfigError(
            f"bench.policies: unknown runtime presets {unknown}; available: {', '.join(runtime_names())}"
        )


def _validate_model(config: PipelineConfig) -> None:
    model = config.model
    if not isinstance(model.architecture, dict) or "_target_" not in model.architecture:
        raise ConfigError("model.architecture must be a mapping with a _target_ factory")
    if model.weights.source is WeightsSource.pretrained and not model.weights.name_or_path:
        raise ConfigError(
            "model.weights.source=pretrained needs model.weights.name_or_path "
            "(a hub id, a local directory or a state-dict file)"
        )
    if not model.inputs:
        raise ConfigError("model.inputs must declare at least one input")
    names = [spec.name for spec in model.inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"model.inputs: duplicate input names {duplicates}")
    for spec in model.inputs:
        key = f"model.inputs[{spec.name}]"
        if not spec.shape or any(d < 1 for d in spec.shape):
            raise ConfigError(f"{key}.shape must be a non-empty list of positive sizes")
    _resolve_named_dims(model)
    for spec in model.inputs:
        key = f"model.inputs[{spec.name}]"
        for bound_name in ("min_shape", "max_shape"):
            bound = getattr(spec, bound_name)
            if bound is not None and len(bound) != len(spec.shape):
                raise ConfigError(f"{key}.{bound_name} must have rank {len(spec.shape)}")
        low = spec.min_shape or spec.shape
        high = spec.max_shape or spec.shape
        if any(not lo <= d <= hi for lo, d, hi in zip(low, spec.shape, high, strict=True)):
            raise ConfigError(f"{key}: need min_shape <= shape <= max_shape in every dimension")
        if spec.padding is not None:
            _validate_padding(spec, key)
            continue
        if spec.low >= spec.high:
            raise ConfigError(f"{key}: value range needs low < high")
        if spec.dtype in (DType.int32, DType.int64) and spec.low != int(spec.low):
            raise ConfigError(f"{key}: integer inputs need a whole-number low bound")
        _validate_value_range(spec, key)


def _validate_padding(spec: InputSpec, key: str) -> None:
    """A padding mask: 0s and 1s (integer or bool) over a last dimension; its values need no range."""
    if spec.dtype in (DType.float16, DType.float32):
        raise ConfigError(f"{key}.padding: a padding mask is int32, int64 or bool, not {spec.dtype.value}")
    if spec.min_value not in (None, 0) or spec.max_value not in (None, 1):
        raise ConfigError(f"{key}.padding: a padding mask holds 0 and 1; min_value/max_value are 0 and 1")
    if spec.dtype is not DType.bool:
        spec.min_value, spec.max_value = 0, 1  # a call with any other value is refused


def _validate_value_range(spec: InputSpec, key: str) -> None:
    """``min_value``/``max_value``: integer inputs only, in order, and holding ``[low, high)``."""
    if spec.min_value is None and spec.max_value is None:
        return
    if spec.dtype not in (DType.int32, DType.int64):
        raise ConfigError(f"{key}: min_value/max_value apply to integer inputs; {spec.dtype.value} has none")
    if spec.min_value is not None and spec.max_value is not None and spec.min_value > spec.max_value:
        raise ConfigError(f"{key}: min_value {spec.min_value} is above max_value {spec.max_value}")
    if spec.min_value is not None and spec.low < spec.min_value:
        raise ConfigError(f"{key}: low {spec.low:g} is below min_value {spec.min_value}")
    if spec.max_value is not None and spec.high - 1 > spec.max_value:
        raise ConfigError(
            f"{key}: values are drawn from [low, high) = [{spec.low:g}, {spec.high:g}), above "
            f"max_value {spec.max_value}: set high <= {spec.max_value + 1}"
        )


def _resolve_named_dims(model: ModelConfig) -> None:
    """Check the named dynamic dimensions and write their ranges into the inputs' shapes.

    Each name in an input's ``dims`` must be declared in ``model.dims``; its ``opt`` is the size
    ``shape`` gives it (every input naming it must agree, and an explicit ``opt`` too). The
    inputs' ``min_shape``/``max_shape`` then follow the ranges, so everything downstream reads
    one form; running this again on its own output changes nothing.
    """
    for dim, dim_range in model.dims.items():
        if not dim.isidentifier():
            raise ConfigError(f"model.dims.{dim}: a dimension name must be an identifier")
        if not 1 <= dim_range.min < dim_range.max:
            raise ConfigError(
                f"model.dims.{dim}: need 1 <= min < max, got min={dim_range.min} max={dim_range.max} "
                "(a dimension of one size is static: null in dims)"
            )
    opt_from: dict[str, str] = {}  # dimension -> the input whose shape gave its opt size
    for spec in model.inputs:
        if spec.dims is not None:
            spec.min_shape, spec.max_shape = _named_bounds(model, spec, spec.dims, opt_from)
    unused = sorted(set(model.dims) - {d for spec in model.inputs for d in spec.dims or () if d})
    if unused:
        raise ConfigError(f"model.dims: {unused} declared but no input names them in its dims")


def _named_bounds(
    model: ModelConfig, spec: InputSpec, dims: list[str | None], opt_from: dict[str, str]
) -> tuple[list[int], list[int]]:
    """``spec``'s min and max shapes with its named dimensions (``dims``) at their declared ranges."""
    key = f"model.inputs[{spec.name}]"
    if len(dims) != len(spec.shape):
        raise ConfigError(f"{key}.dims must name each of the {len(spec.shape)} dimensions (null: static)")
    low, high = list(spec.min_shape or spec.shape), list(spec.max_shape or spec.shape)
    for index, dim in enumerate(dims):
        if dim is None:
            if low[index] != high[index]:
                raise ConfigError(f"{key}.dims[{index}] varies in min_shape/max_shape: give it a name")
            continue
        dim_range = model.dims.get(dim)
        if dim_range is None:
            declared = ", ".join(model.dims) or "none"
            raise ConfigError(
                f"{key}.dims[{index}]: dimension {dim!r} is not in model.dims (declared: {declared})"
            )
        size = spec.shape[index]
        if dim_range.opt is None:
            dim_range.opt = size
            opt_from[dim] = spec.name
        if size != dim_range.opt and dim in opt_from and opt_from[dim] != spec.name:
            raise ConfigError(
                f"{key}.shape[{index}] is {size}, but model.inputs[{opt_from[dim]}] gives dimension "
                f"{dim!r} size {dim_range.opt}: inputs that share a dimension share its opt size"
            )
        if size != dim_range.opt or not dim_range.min <= size <= dim_range.max:
            raise ConfigError(
                f"{key}.shape[{index}] is {size}, but dimension {dim!r} has opt {dim_range.opt} in "
                f"{dim_range.min}..{dim_range.max}: the shape gives each named dimension its opt size"
            )
        for bound_name, bound, expected in (
            ("min_shape", spec.min_shape, dim_range.min),
            ("max_shape", spec.max_shape, dim_range.max),
        ):
            if bound is not None and len(bound) == len(spec.shape) and bound[index] != expected:
                raise ConfigError(
                    f"{key}.{bound_name}[{index}] is {bound[index]} but dimension {dim!r} ranges "
                    f"{dim_range.min}..{dim_range.max}: declare the range in model.dims only"
                )
        low[index], high[index] = dim_range.min, dim_range.max
    return low, high


def _validate_compile_and_runtime(config: PipelineConfig) -> None:
    settings, runtime = config.compile, config.runtime
    if settings.optimization_level is not None and not 0 <= settings.optimization_level <= 5:
        raise ConfigError("compile.optimization_level must be null or 0..5")
    if settings.min_block_size < 1:
        raise ConfigError("compile.min_block_size must be >= 1")
    if settings.l2_limit_for_tiling < -1:
        raise ConfigError("compile.l2_limit_for_tiling must be -1 (no limit) or a size in bytes")
    if settings.workspace_size < 0:
        raise ConfigError("compile.workspace_size must be >= 0 (0: TensorRT's default)")
    # The impossible combination first: naming the compile flag it would also need would send
    # the user to set a flag only to be refused by this check.
    if problems := runtime.problems():
        raise ConfigError(problems[0])
    if runtime.dynamic_allocation and not settings.dynamically_allocate_resources:
        raise ConfigError(
            f"runtime={runtime.name} allocates engine memory per call, which needs "
            "compile.dynamically_allocate_resources=true"
        )
    if config.backend.kind is BackendKind.tensorrt and config.backend.device is DeviceKind.cpu:
        raise ConfigError("backend=tensorrt runs on CUDA only; set backend.device=cuda or auto")


def _validate_stages(stages: list[Stage]) -> None:
    if not all(isinstance(stage, Stage) for stage in stages):
        raise ConfigError(f"stages must list stage names: {[s.value for s in Stage]}")
    if not stages:
        raise ConfigError(f"stages must name at least one of {[s.value for s in Stage]}")
    if len(set(stages)) != len(stages):
        raise ConfigError("stages lists a stage twice")
    for stage in stages:
        needed = STAGE_NEEDS.get(stage)
        if needed is not None and needed not in stages:
            raise ConfigError(f"stage '{stage.value}' needs stage '{needed.value}' in stages")


def _missing_option_error(exc: MissingConfigException, user_dirs: Sequence[Path] = ()) -> ConfigError:
    missing = exc.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    if not group:
        return ConfigError(_first_line(str(exc)))
    options = exc.options or _group_options(group, user_dirs)
    return ConfigError(
        f"{group}={option}: no such option in config group '{group}'; available: {', '.join(options)}"
    )


def runtime_names() -> list[str]:
    """Names of the runtime presets (``conf/runtime/*.yaml``)."""
    return _group_options("runtime")


def _group_options(group: str, user_dirs: Sequence[Path] = ()) -> list[str]:
    return sorted({p.stem for root in (*user_dirs, CONFIG_DIR) for p in (root / group).glob("*.yaml")})


# Hydra's message for a mistake inside one YAML file of the composition.
_IN_CONFIG = re.compile(
    r"In '(?P<config>[^']+)': \w+ raised while composing config:\s*\n(?P<detail>.*)", re.S
)
_DETAIL_FIELD = re.compile(r"^\s*(full_key: |object_type=)(?P<value>.*)$", re.M)
_INVALID_CHOICE = re.compile(r"Invalid value '(?P<value>[^']*)', expected one of \[(?P<allowed>[^\]]*)\]")


def _config_file_error(message: str, search_dirs: Sequence[Path]) -> ConfigError | None:
    """One line for a bad key or value inside a YAML file: the file (and line), the key, the fix.

    Hydra reports these as a multi-line ``In 'model/x': ... raised while composing config``
    message without a chained exception, so the message is what there is to read. None when
    ``message`` is not of that form.
    """
    match = _IN_CONFIG.match(message)
    if match is None:
        return None
    config_path, detail = match["config"], match["detail"]
    problem = _first_line(detail)
    fields = {m[1].strip(" :="): m["value"].strip() for m in _DETAIL_FIELD.finditer(detail)}
    key = fields.get("full_key", "")
    owner = _schema_classes().get(fields.get("object_type", ""))
    group = config_path.rpartition("/")[0].replace("/", ".")
    if owner is not None and "." not in key and owner.__name__ != _ROOTS[CONFIG_NAME].__name__:
        # Keys inside list elements (an input spec) come without their path: give it.
        key = f"{_schema_paths().get(owner, group)}.{key}"
    elif group and key and not key.startswith(group + "."):
        key = f"{group}.{key}"
    leaf = key.rpartition(".")[2]
    candidates = (root / f"{config_path}.yaml" for root in search_dirs)
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    choice = _INVALID_CHOICE.search(problem)
    where = str(path) if path is not None else config_path
    line = _line_of(path, leaf, choice["value"] if choice else None) if path is not None else None
    if line is not None:
        where += f":{line}"
    if "not in '" in problem or "not in struct" in problem:
        if owner is not None:
            allowed = [f.name for f in dataclasses.fields(owner)]
            hint = difflib.get_close_matches(leaf, allowed, n=1)
            did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
            return ConfigError(f"{where}: {key}: unknown key; {did_you_mean}allowed: {', '.join(allowed)}")
        return ConfigError(f"{where}: {_unknown_key_message(key, problem, _ROOTS[CONFIG_NAME])}")
    if choice is not None:
        allowed = [value.strip() for value in choice["allowed"].split(",")]
        hint = difflib.get_close_matches(choice["value"], allowed, n=1)
        did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
        return ConfigError(
            f"{where}: {key}: invalid value '{choice['value']}'; {did_you_mean}allowed: {', '.join(allowed)}"
        )
    return ConfigError(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


def _line_of(path: Path, key: str, value: str | None) -> int | None:
    """The 1-based line of ``path`` where ``key`` is set (to ``value``, when given), if findable."""
    value_pattern = rf"\s*['\"]?{re.escape(value)}\b" if value else ""
    pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*:{value_pattern}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return next((number for number, line in enumerate(lines, 1) if pattern.search(line)), None)


def _yaml_syntax_error(exc: yaml.YAMLError) -> ConfigError:
    """``FILE:LINE:COLUMN: YAML syntax error: what was expected`` in one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or _first_line(str(exc))
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "a config file"
    while_ = ""
    if context and context_mark is not None:
        while_ = f" ({context} that starts at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return ConfigError(f"{where}: YAML syntax error: {problem}{while_}")


@functools.cache
def _schema_paths() -> dict[type, str]:
    """Each schema dataclass and the dotted key where it sits (``model.inputs[]`` for InputSpec)."""
    paths: dict[type, str] = {}

    def visit(node: type, path: str) -> None:
        paths.setdefault(node, path)
        for name, hint in get_type_hints(node).items():
            origin, args = typing.get_origin(hint), typing.get_args(hint)
            # A dataclass field, a list of them (inputs) or a mapping to them (dims).
            element, suffix = hint, ""
            if origin is list and args:
                element, suffix = args[0], "[]"
            elif origin is dict and len(args) == 2:
                element, suffix = args[1], ".<name>"
            if isinstance(element, type) and dataclasses.is_dataclass(element):
                visit(element, f"{path}.{name}{suffix}".lstrip("."))

    for root in _ROOTS.values():
        visit(root, "")
    return paths


@functools.cache
def _schema_classes() -> dict[str, type]:
    return {node.__name__: node for node in _schema_paths()}


def _composition_error(exc: Exception, root: type = PipelineConfig) -> ConfigError:
    cause: Any = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if cause is None:
        return ConfigError(_first_line(str(exc)))
    full_key = getattr(cause, "full_key", None) or ""
    message = _first_line(getattr(cause, "msg", None) or str(cause))
    if "not in struct" in message or "not in '" in message or "Key '" in message:
        return ConfigError(_unknown_key_message(full_key, message, root))
    if "missing mandatory value" in message.lower():
        return ConfigError(f"{full_key}: a value is required")
    value_message = message.replace("$VALUE", "").strip()
    return ConfigError(f"{full_key}: {value_message}" if full_key else value_message)


def _unknown_key_message(full_key: str, fallback: str, root: type) -> str:
    if not full_key:
        return fallback
    parent, _, leaf = full_key.rpartition(".")
    allowed = _schema_keys(parent, root)
    if allowed is None:
        return f"{full_key}: unknown key"
    hint = difflib.get_close_matches(leaf, allowed, n=1)
    did_you_mean = f"did you mean '{hint[0]}'? " if hint else ""
    where = f"'{parent}'" if parent else "the top level"
    return f"{full_key}: unknown key in {where}; {did_you_mean}allowed: {', '.join(allowed)}"


def _schema_keys(path: str, root: type) -> list[str] | None:
    """Field names of the schema dataclass at dotted ``path`` (None where it is not a dataclass)."""
    node: Any = root
    for part in filter(None, path.split(".")):
        if not dataclasses.is_dataclass(node):
            return None
        hints = get_type_hints(node)
        if part not in hints:
            return None
        node = hints[part]
    if not dataclasses.is_dataclass(node):
        return None
    return [f.name for f in dataclasses.fields(node)]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
