"""Fuzzing the two parsers that read untrusted data: configs and manifests.

Whatever they are fed, only the project's own ConfigError / BundleError comes out, each example
within hypothesis' 1 s deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import PipelineConfig, compose, config_dict, parse, resolve
from pipeline.errors import BundleError, ConfigError
from pipeline.runtime.format import Manifest
from tests.helpers import sample_manifest
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.reliability


def examples(count: int) -> settings:
    """Deterministic runs of ``count`` examples; each must finish within 1 s."""
    return settings(
        max_examples=count, deadline=1000, suppress_health_check=list(HealthCheck), derandomize=True
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


def only_config_errors(tally: Tally, data: Any) -> None:
    only_project_errors(tally, parse, data, ConfigError)


def test_config_parser_raises_only_config_error_when_fed_random_trees(tally: Callable[[str], Tally]) -> None:
    check = tally("fuzz: config parser (random trees + mutated valid)")

    @examples(6_000)
    @given(st.one_of(TREES, st.dictionaries(KEYS, TREES, max_size=6)))
    def random_trees(data: Any) -> None:
        only_config_errors(check, data)

    @examples(4_000)
    @given(st.lists(KEYS, min_size=1, max_size=4), TREES)
    def mutated_valid(path: list[str], value: Any) -> None:
        only_config_errors(check, mutate(VALID_CONFIG, path, value))

    random_trees()
    mutated_valid()
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
