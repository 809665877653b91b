"""Every config option composes into the typed schema; every class of bad config fails clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import (
    CONFIG_DIR,
    BackendKind,
    PipelineConfig,
    Precision,
    RuntimeConfig,
    compose,
    config_dict,
    parse,
    resolve,
)
from pipeline.config.loading import runtime_names
from pipeline.errors import ConfigError
from pipeline.runtime.policy import runtime_preset

GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
GROUP_OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]


def test_config_groups_cover_what_users_select_when_listed() -> None:
    assert {"model", "precision", "runtime", "backend", "compile", "verify", "bench"} <= set(GROUPS)
    assert {"bert", "resnet152", "resnet50", "tiny_bert", "tiny_cnn"} <= {
        option for group, option in GROUP_OPTIONS if group == "model"
    }
    assert set(runtime_names()) == {"standard", "preallocated", "dynamic", "cudagraphs"}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_config_converts_to_schema_when_any_group_option_is_selected(group: str, option: str) -> None:
    config = resolve(compose([f"{group}={option}"]))
    assert isinstance(config, PipelineConfig)
    if group == "model":
        assert config.model.name == option
        assert config.model.inputs
    elif group == "precision":
        assert config.precision is Precision(option)
    elif group == "runtime":
        assert config.runtime.name == option
    elif group == "backend":
        assert config.backend.kind is BackendKind(option)


def test_runtime_dynamic_sets_the_seed_compile_flags_when_selected() -> None:
    config = resolve(compose(["runtime=dynamic"]))
    assert config.runtime.dynamic_allocation
    assert config.compile.lazy_engine_init
    assert config.compile.dynamically_allocate_resources
    assert not config.compile.immutable_weights


@pytest.mark.parametrize("name", ["standard", "preallocated", "dynamic", "cudagraphs"])
def test_runtime_preset_equals_composed_runtime_when_loaded_by_name(name: str) -> None:
    assert runtime_preset(name) == resolve(compose([f"runtime={name}"])).runtime


def test_compose_lists_available_models_when_model_option_is_unknown() -> None:
    with pytest.raises(ConfigError) as caught:
        compose(["model=bret"])
    message = str(caught.value)
    assert "model=bret" in message
    assert "bert, bert_dynamic, resnet152, resnet50, tiny_bert, tiny_bert_dynamic, tiny_cnn" in message
    assert "\n" not in message


def test_compose_names_key_and_suggestion_when_key_is_misspelled() -> None:
    with pytest.raises(ConfigError) as caught:
        compose(["compile.lazy_engin_init=true"])
    message = str(caught.value)
    assert message.startswith("compile.lazy_engin_init: unknown key")
    assert "did you mean 'lazy_engine_init'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("compile.min_block_size=abc", "compile.min_block_size"),
        ("model.inputs.0.dtype=int8", "expected one of [float32, float16, int32, int64, bool]"),
        ("backend.kind=onnx", "expected one of [auto, tensorrt, export]"),
        ("precision=fp6", "available: bf16, fp16, fp32, fp4, fp8, int4, int8, int8_weight_only"),
        ("runtime=fast", "available: cudagraphs, dynamic, preallocated, standard"),
    ],
)
def test_compose_explains_allowed_values_when_value_is_bad(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(compose([override]))
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["runtime=dynamic", "compile.dynamically_allocate_resources=false"],
            "dynamically_allocate_resources=true",
        ),
        (
            [
                "runtime=cudagraphs",
                "runtime.dynamic_allocation=true",
                "compile.dynamically_allocate_resources=true",
            ],
            "cannot be combined",
        ),
        (["stages=[build,verify]"], "stage 'verify' needs stage 'reload'"),
        (["stages=[]"], "at least one"),
        (["model.weights.source=pretrained"], "needs model.weights.name_or_path"),
        (["model=tiny_cnn", "model.inputs.0.min_shape=[4,3,32,32]"], "min_shape <= shape <= max_shape"),
        (["model=tiny_cnn", "model.inputs.0.max_shape=[8,3,32]"], "max_shape must have rank 4"),
        (["compile.optimization_level=9"], "optimization_level"),
        (["compile.l2_limit_for_tiling=-2"], "l2_limit_for_tiling"),
        (["compile.tiling_optimization_level=fastest"], "tiling_optimization_level"),
        (["backend=tensorrt", "backend.device=cpu"], "CUDA only"),
        (["verify.random_input_sets=-1"], "random_input_sets"),
    ],
)
def test_validate_rejects_contradictions_when_combined(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(compose(overrides))
    assert expected in str(caught.value)


def test_config_error_exits_with_code_2() -> None:
    assert ConfigError.exit_code == 2


def test_runtime_config_defaults_are_the_standard_policy() -> None:
    assert RuntimeConfig() == runtime_preset("standard")


USER_MODEL = (
    "name: mine\n"
    "architecture: {_target_: pipeline.models.zoo.small_cnn}\n"
    "inputs:\n"
    "  - {name: images, shape: [1, 3, 16, 16], dtype: float32}\n"
)


def user_model_error(tmp_path: Path, text: str) -> str:
    """The one-line error for ``model=mine`` written as ``text`` in a --config-dir directory."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        compose(["model=mine"], config_dirs=[tmp_path])
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_compose_finds_model_yaml_when_it_is_in_a_config_dir(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(USER_MODEL)
    assert resolve(compose(["model=mine"], config_dirs=[tmp_path])).model.name == "mine"


def test_compose_names_file_line_and_key_with_hint_when_user_yaml_has_unknown_key(tmp_path: Path) -> None:
    message = user_model_error(tmp_path, USER_MODEL.replace("inputs:", "input:"))
    assert message.startswith(f"{tmp_path / 'model' / 'mine.yaml'}:3: model.input: unknown key; ")
    assert "did you mean 'inputs'?" in message


def test_compose_names_input_key_and_hint_when_user_yaml_misspells_an_input_field(tmp_path: Path) -> None:
    message = user_model_error(tmp_path, USER_MODEL.replace("dtype:", "dtyp:"))
    assert message.startswith(f"{tmp_path / 'model' / 'mine.yaml'}:4: model.inputs[].dtyp: unknown key; ")
    assert "did you mean 'dtype'?" in message


def test_compose_names_allowed_values_and_hint_when_user_yaml_has_bad_dtype(tmp_path: Path) -> None:
    message = user_model_error(tmp_path, USER_MODEL.replace("dtype: float32", "dtype: float"))
    assert message == (
        f"{tmp_path / 'model' / 'mine.yaml'}:4: model.inputs[].dtype: invalid value 'float'; "
        "did you mean 'float32'? allowed: float32, float16, int32, int64, bool"
    )


def test_compose_names_file_line_and_column_when_user_yaml_has_syntax_error(tmp_path: Path) -> None:
    message = user_model_error(tmp_path, USER_MODEL.replace("small_cnn}", "small_cnn"))
    assert message.startswith(f"{tmp_path / 'model' / 'mine.yaml'}:3:")
    assert "YAML syntax error: expected ',' or '}'" in message


def test_validate_says_impossible_without_compile_flag_when_cudagraphs_get_dynamic_allocation() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(compose(["runtime=cudagraphs", "runtime.dynamic_allocation=true"]))
    assert "cannot be combined" in str(caught.value)
    assert "dynamically_allocate_resources" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("artifacts_dir", False), ("force", 1), ("force", "true"), ("verify.seed", "5"), ("model.name", 3)],
)
def test_parse_refuses_a_value_of_another_type_when_omegaconf_would_convert_it(
    key: str, value: object
) -> None:
    data = config_dict(resolve(compose(["model=tiny_cnn"])))
    *parents, leaf = key.split(".")
    node = data
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ConfigError, match=f"{key}: expected"):
        parse(data)


@pytest.mark.parametrize("model", ["bert", "bert_dynamic", "tiny_bert", "tiny_bert_dynamic"])
def test_bert_configs_send_what_a_tokenizer_sends_when_composed(model: str) -> None:
    config = resolve(compose([f"model={model}"]))
    inputs = {spec.name: spec for spec in config.model.inputs}
    vocab = config.model.architecture["vocab_size"]
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert (ids.low, ids.high, ids.max_value) == (0, vocab, vocab - 1)  # the whole vocabulary
    assert mask.padding is not None and (mask.min_value, mask.max_value) == (0, 1)
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
