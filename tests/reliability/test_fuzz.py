"""Fuzzing the two parsers that read untrusted data: configs and manifests.

Whatever they are fed, only the project's own ConfigError / BundleError comes out, each example
within a 5 s deadline (a hang or a pathological case, not a timing: the parsers take milliseconds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline.config.loading as loading
from pipeline.config import PipelineConfig, compose, config_dict, parse, resolve
from pipeline.errors import BundleError, ConfigError
from pipeline.runtime.format import Manifest
from tests.helpers import sample_manifest
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.reliability


def examples(count: int) -> settings:
    """Deterministic runs of ``count`` examples; each must finish within 5 s."""
    return settings(
        max_examples=count, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True
    )


def schema_keys(node: Any = PipelineConfig) -> set[str]:
    keys: set[str] = set()
    if is_dataclass(node):
        hints = get_type_hints(node)
        for field in fields(node):
            keys.add(field.name)
            keys |= schema_keys(hints[field.name])
    return keys


KEYS = st.sampled_from(sorted(schema_keys() | {"_target_", "name", "shape", "dtype"})) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(
        ["fp16", "fp32", "auto", "tensorrt", "export", "standard", "dynamic", "int32", "build", "???"]
    )
)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
VALID_CONFIG = config_dict(resolve(compose(["model=tiny_cnn"])))


def mutate(base: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """``base`` with the value at ``path`` (created as needed) replaced by ``value``."""
    result = json.loads(json.dumps(base))
    node = result
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    if path:
        node[path[-1]] = value
    return result


def only_project_errors(
    tally: Tally, parser: Callable[[Any], object], data: Any, allowed: type[Exception]
) -> None:
    """Feed ``data`` to ``parser``: an ``allowed`` error counts as rejected, a valid input as accepted,
    anything else escapes (and fails the test)."""
    try:
        parser(data)
    except allowed:
        tally.count(rejected=True)
        return
    except Exception as error:
        tally.count(rejected=False)
        raise AssertionError(
            f"{type(error).__name__} escaped {parser.__qualname__}({data!r}): {error}"
        ) from error
    tally.accepted_valid += 1


def unfaithful(data: Any, resolved: Any, path: str = "") -> list[str]:
    """Where an accepted config does not say what its input said: a key dropped, a value
    changed or retyped on the way (an int where a float was given is the one widening allowed)."""
    if isinstance(data, dict):
        if not isinstance(resolved, dict):
            return [f"{path or '<root>'}: a mapping became {resolved!r}"]
        return [
            problem
            for key, value in data.items()
            for problem in (
                unfaithful(value, resolved[key], f"{path}.{key}")
                if key in resolved
                else [f"{path}.{key}: dropped"]
            )
        ]
    if isinstance(data, list):
        if not isinstance(resolved, list) or len(resolved) != len(data):
            return [f"{path}: {data!r} became {resolved!r}"]
        return [
            p
            for i, (a, b) in enumerate(zip(data, resolved, strict=True))
            for p in unfaithful(a, b, f"{path}[{i}]")
        ]
    widened = type(data) is int and type(resolved) is float and data == resolved
    same_nan = (
        isinstance(data, float) and isinstance(resolved, float) and math.isnan(data) and math.isnan(resolved)
    )
    if not widened and not same_nan and (type(data) is not type(resolved) or data != resolved):
        return [f"{path}: {data!r} became {resolved!r}"]
    return []


def out_of_bounds(config: dict[str, Any]) -> list[str]:
    """The documented limits (README, schema docstrings), restated apart from the validator."""
    compile_, verify, bench, runtime = config["compile"], config["verify"], config["bench"], config["runtime"]
    level = compile_["optimization_level"]
    stages = config["stages"]
    needs = {"compile": "build", "serialize": "compile", "reload": "serialize", "verify": "reload"}
    needs |= {"bench": "reload", "package": "verify"}
    inputs = config["model"]["inputs"]
    limits = {
        "compile.min_block_size >= 1": compile_["min_block_size"] >= 1,
        "compile.optimization_level null or 0..5": level is None or 0 <= level <= 5,
        "compile.workspace_size >= 0": compile_["workspace_size"] >= 0,
        "compile.l2_limit_for_tiling >= -1": compile_["l2_limit_for_tiling"] >= -1,
        "verify.random_input_sets >= 0": verify["random_input_sets"] >= 0,
        "bench.warmup >= 0, iterations and rounds >= 1": bench["warmup"] >= 0
        and bench["iterations"] >= 1
        and bench["rounds"] >= 1,
        "bench.warmup_s in 0..600": 0 <= bench["warmup_s"] <= 600,
        "runtime: no CUDA graphs with per-call allocation": not (
            runtime["cuda_graphs"] and runtime["dynamic_allocation"]
        ),
        "runtime.dynamic_allocation needs compile.dynamically_allocate_resources": not runtime[
            "dynamic_allocation"
        ]
        or compile_["dynamically_allocate_resources"],
        "stages: some, each once, each after what it needs": bool(stages)
        and len(set(stages)) == len(stages)
        and all(needs.get(stage, stage) in stages for stage in stages),
        "model.inputs: some, named once, positive sizes": bool(inputs)
        and len({spec["name"] for spec in inputs}) == len(inputs)
        and all(spec["shape"] and min(spec["shape"]) >= 1 for spec in inputs),
    }
    for name in ("fp32", "fp16"):
        tolerance = verify[name]
        limits[f"verify.{name}: finite atol, rtol >= 0, min_cosine in [-1, 1]"] = (
            math.isfinite(tolerance["atol"])
            and math.isfinite(tolerance["rtol"])
            and tolerance["atol"] >= 0
            and tolerance["rtol"] >= 0
            and -1 <= tolerance["min_cosine"] <= 1
        )
    return [limit for limit, holds in limits.items() if not holds]


def only_config_errors(tally: Tally, data: Any) -> None:
    """Feed ``data`` to the config parser: a ConfigError counts as rejected; an accepted config
    counts as wrongly accepted (and fails) unless it says what ``data`` said and keeps every
    documented limit."""
    try:
        parsed = parse(data)
    except ConfigError:
        tally.count(rejected=True)
        return
    except Exception as error:
        tally.count(rejected=False)
        raise AssertionError(f"{type(error).__name__} escaped parse({data!r}): {error}") from error
    resolved = config_dict(parsed)
    problems = unfaithful(data, resolved) + out_of_bounds(resolved)
    if problems:
        tally.count(rejected=False)
        raise AssertionError(f"parse accepted an invalid config ({'; '.join(problems)}): {data!r}")
    tally.accepted_valid += 1


#: Edits of a valid config that the documentation says are invalid: each must be refused.
INVALID_EDITS = st.one_of(
    st.tuples(st.just(["compile", "min_block_size"]), st.integers(max_value=0)),
    st.tuples(st.just(["compile", "optimization_level"]), st.integers(6) | st.integers(max_value=-1)),
    st.tuples(st.just(["compile", "workspace_size"]), st.integers(max_value=-1)),
    st.tuples(st.just(["compile", "l2_limit_for_tiling"]), st.integers(max_value=-2)),
    st.tuples(st.just(["verify", "random_input_sets"]), st.integers(max_value=-1)),
    st.tuples(
        st.sampled_from([["verify", p, k] for p in ("fp32", "fp16") for k in ("atol", "rtol")]),
        st.floats(max_value=-1e-9) | st.just(math.nan) | st.just(math.inf),
    ),
    st.tuples(
        st.sampled_from([["verify", "fp32", "min_cosine"], ["verify", "fp16", "min_cosine"]]),
        st.floats(min_value=1.0001) | st.floats(max_value=-1.0001) | st.just(math.nan),
    ),
    st.tuples(st.sampled_from([["bench", "iterations"], ["bench", "rounds"]]), st.integers(max_value=0)),
    st.tuples(st.just(["bench", "warmup"]), st.integers(max_value=-1)),
    st.tuples(
        st.just(["bench", "warmup_s"]),
        st.floats(max_value=-1e-9) | st.floats(min_value=600.001) | st.just(math.nan),
    ),
    st.tuples(st.just(["runtime"]), st.just({"name": "x", "cuda_graphs": True, "dynamic_allocation": True})),
    st.tuples(st.just(["runtime", "dynamic_allocation"]), st.just(True)),
    st.tuples(
        st.just(["stages"]),
        st.lists(
            st.sampled_from(["build", "compile", "serialize", "reload", "verify", "bench", "package"])
        ).filter(lambda stages: not stages or len(set(stages)) < len(stages) or "build" not in stages),
    ),
    st.tuples(st.sampled_from([["bogus"], ["compile", "bogus"], ["model", "weights", "bogus"]]), SCALARS),
)


def test_config_fuzz_counts_wrongly_accepted_when_the_parser_accepts_an_invalid_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = Tally("probe")
    monkeypatch.setattr(loading, "validate", lambda config: None)  # a parser with a hole
    with pytest.raises(AssertionError, match="accepted an invalid config"):
        only_config_errors(probe, mutate(VALID_CONFIG, ["compile", "min_block_size"], 0))
    assert (probe.tried, probe.wrongly_accepted, probe.accepted_valid) == (1, 1, 0)


def test_config_parser_raises_only_config_error_when_fed_random_trees(tally: Callable[[str], Tally]) -> None:
    check = tally("fuzz: config parser (random trees, mutated valid, invalid edits)")

    @examples(6_000)
    @given(st.one_of(TREES, st.dictionaries(KEYS, TREES, max_size=6)))
    def random_trees(data: Any) -> None:
        only_config_errors(check, data)

    @examples(4_000)
    @given(st.lists(KEYS, min_size=1, max_size=4), TREES)
    def mutated_valid(path: list[str], value: Any) -> None:
        only_config_errors(check, mutate(VALID_CONFIG, path, value))

    @examples(2_000)
    @given(INVALID_EDITS)
    def invalid_edits(edit: tuple[list[str], Any]) -> None:
        path, value = edit
        only_config_errors(check, mutate(VALID_CONFIG, path, value))

    random_trees()
    mutated_valid()
    invalid_edits()
    assert check.wrongly_accepted == 0


VALID_MANIFEST = json.loads(sample_manifest(config=VALID_CONFIG).to_json())


def only_bundle_errors(tally: Tally, text: str) -> None:
    only_project_errors(tally, Manifest.from_json, text, BundleError)


def test_manifest_parser_raises_only_bundle_error_when_fed_random_input(
    tally: Callable[[str], Tally],
) -> None:
    check = tally("fuzz: manifest parser (text, JSON, mutated valid)")
    valid_text = json.dumps(VALID_MANIFEST, indent=2, sort_keys=True)

    @examples(5_000)
    @given(
        st.one_of(st.text(max_size=200), TREES.map(json.dumps), st.dictionaries(KEYS, TREES).map(json.dumps))
    )
    def random_input(text: str) -> None:
        only_bundle_errors(check, text)

    @examples(3_000)
    @given(st.integers(0, len(valid_text)), st.integers(0, 20), st.text(max_size=20))
    def spliced(start: int, length: int, insert: str) -> None:
        only_bundle_errors(check, valid_text[:start] + insert + valid_text[start + length :])

    @examples(2_000)
    @given(st.sampled_from(sorted(VALID_MANIFEST)), TREES)
    def retyped_field(key: str, value: Any) -> None:
        data = {**VALID_MANIFEST, key: value}
        data.pop("manifest_sha256")
        from pipeline.runtime.format import _content_digest

        only_bundle_errors(check, json.dumps({**data, "manifest_sha256": _content_digest(data)}, default=str))

    random_input()
    spliced()
    retyped_field()
    assert check.wrongly_accepted == 0


def test_manifest_parser_accepts_its_own_output_when_round_tripped() -> None:
    text = json.dumps(VALID_MANIFEST, indent=2, sort_keys=True) + "\n"
    assert Manifest.from_json(text) == sample_manifest(config=VALID_CONFIG)
