"""The manifest parser and the bundle id."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import BundleError
from pipeline.runtime.format import (
    DIGEST_KEY,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    _content_digest,
    bundle_id,
    canonical_json,
    read_manifest,
)
from tests import helpers


def sample_manifest() -> Manifest:
    return helpers.sample_manifest(bundle_id="abc", files=[FileEntry("model/model.pt2", 3, "00")])


def test_manifest_round_trips_through_json_when_written_and_read() -> None:
    manifest = sample_manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest


def with_digest(data: dict[str, Any]) -> str:
    """JSON text of ``data`` with a digest that matches it (an edit made by the bundle's author)."""
    return json.dumps({**data, "manifest_sha256": _content_digest(data)})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "not json{", "not valid JSON"),
        (lambda d: json.dumps([1, 2]), "expected a JSON object"),
        (lambda d: with_digest({**d, "format_version": 99}), "format_version 99"),
        (lambda d: with_digest({k: v for k, v in d.items() if k != "backend"}), "missing fields ['backend']"),
        (lambda d: with_digest({**d, "engine_count": "1"}), "'engine_count' has the wrong type"),
        (lambda d: with_digest({**d, "files": [{"path": "x"}]}), "malformed file entry"),
        (
            lambda d: with_digest({**d, "files": [{"path": 1, "size": 1, "sha256": "0"}]}),
            "malformed file entry",
        ),
        (lambda d: json.dumps({**d, "backend": "tensorrt", "manifest_sha256": "0" * 64}), "manifest_sha256"),
    ],
)
def test_manifest_parser_raises_bundle_error_when_manifest_is_malformed(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BundleError) as caught:
        Manifest.from_json(edit(asdict(sample_manifest())))
    assert message in str(caught.value)


def test_bundle_id_is_stable_when_inputs_are_equal_and_changes_when_any_differs() -> None:
    base = bundle_id({"a": 1}, {"torch": "2.14"}, "w1")
    assert base == bundle_id({"a": 1}, {"torch": "2.14"}, "w1")
    assert base != bundle_id({"a": 2}, {"torch": "2.14"}, "w1")
    assert base != bundle_id({"a": 1}, {"torch": "2.11"}, "w1")
    assert base != bundle_id({"a": 1}, {"torch": "2.14"}, "w2")


def test_manifest_parser_detects_edit_when_a_value_changes_without_breaking_json() -> None:
    text = sample_manifest().to_json().replace('"tiny_cnn"', '"tiny_cnX"')
    with pytest.raises(BundleError, match="does not match its manifest_sha256"):
        Manifest.from_json(text)


def test_read_manifest_accepts_a_bundle_written_before_a_field_was_added_when_it_lacks_the_field(
    tmp_path: Path,
) -> None:
    data = asdict(sample_manifest())
    del data["runtime_cache"]  # an optional field later versions added
    (tmp_path / MANIFEST_NAME).write_text(canonical_json({**data, DIGEST_KEY: _content_digest(data)}))
    assert read_manifest(tmp_path).runtime_cache == {}
    # Still byte-exact: the same content written another way is a modified file.
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**data, DIGEST_KEY: _content_digest(data)}))
    with pytest.raises(BundleError, match="not in canonical form"):
        read_manifest(tmp_path)
