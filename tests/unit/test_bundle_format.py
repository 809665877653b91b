"""The manifest parser and the bundle id."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from pipeline.bundle.format import FORMAT_VERSION, FileEntry, Manifest, bundle_id
from pipeline.errors import BundleError


def sample_manifest() -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        pipeline_version="0.1.0",
        bundle_id="abc",
        created_at="2026-11-22T00:00:00+00:00",
        backend="export",
        device="cpu",
        precision="fp32",
        model_name="tiny_cnn",
        model_file="model/model.pt2",
        environment={"torch": "2.14.1"},
        config={},
        overrides=[],
        compile_settings={},
        runtime={"policy": {"name": "standard"}, "applied": True, "reason": ""},
        inputs=[],
        outputs=[],
        verification={"passed": True},
        weights={"source": "random"},
        engine_count=0,
        files=[FileEntry("model/model.pt2", 3, "00")],
    )


def test_manifest_round_trips_through_json_when_written_and_read() -> None:
    manifest = sample_manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "not json{", "not valid JSON"),
        (lambda d: json.dumps([1, 2]), "expected a JSON object"),
        (lambda d: json.dumps({**d, "format_version": 99}), "format_version 99"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k != "backend"}), "missing fields ['backend']"),
        (lambda d: json.dumps({**d, "engine_count": "1"}), "'engine_count' has the wrong type"),
        (lambda d: json.dumps({**d, "files": [{"path": "x"}]}), "malformed file entry"),
        (
            lambda d: json.dumps({**d, "files": [{"path": 1, "size": 1, "sha256": "0"}]}),
            "malformed file entry",
        ),
    ],
)
def test_manifest_parser_raises_bundle_error_when_manifest_is_malformed(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = asdict(sample_manifest())
    with pytest.raises(BundleError) as caught:
        Manifest.from_json(edit(data))
    assert message in str(caught.value)


def test_bundle_id_is_stable_when_inputs_are_equal_and_changes_when_any_differs() -> None:
    base = bundle_id({"a": 1}, {"torch": "2.14"}, "w1")
    assert base == bundle_id({"a": 1}, {"torch": "2.14"}, "w1")
    assert base != bundle_id({"a": 2}, {"torch": "2.14"}, "w1")
    assert base != bundle_id({"a": 1}, {"torch": "2.11"}, "w1")
    assert base != bundle_id({"a": 1}, {"torch": "2.14"}, "w2")
