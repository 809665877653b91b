"""Signatures cover the manifest's bytes as written: a signed bundle made before a manifest field
existed still verifies, and any byte added after signing is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import BundleError
from pipeline.runtime import open_bundle
from pipeline.runtime.archive import release_unpacked
from pipeline.runtime.format import DIGEST_KEY, MANIFEST_NAME, _content_digest, canonical_json
from pipeline.runtime.trust import TrustPolicy, generate_key_pair, sign_bundle


def rewrite(root: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the manifest as its author would (edited content, matching digest, canonical)."""
    data = json.loads((root / MANIFEST_NAME).read_text())
    data.pop(DIGEST_KEY)
    edit(data)
    (root / MANIFEST_NAME).write_text(canonical_json({**data, DIGEST_KEY: _content_digest(data)}))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[bytes, TrustPolicy]:
    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    generate_key_pair(private, public)
    return private.read_bytes(), TrustPolicy(trusted_keys=(public.read_bytes(),), require_signature=True)


def test_open_bundle_verifies_the_signature_when_the_bundle_predates_a_manifest_field(
    bundle_copy: Path, keys: tuple[bytes, TrustPolicy]
) -> None:
    private, trust = keys
    rewrite(bundle_copy, lambda data: data.pop("runtime_cache", None))  # as written before caches
    sign_bundle(bundle_copy, private)
    opened = open_bundle(bundle_copy, trust)
    root, manifest = opened.root, opened.manifest
    release_unpacked(root)
    assert manifest.runtime_cache == {}


def test_open_bundle_refuses_the_signature_when_a_key_is_added_after_signing(
    bundle_copy: Path, keys: tuple[bytes, TrustPolicy]
) -> None:
    private, trust = keys
    sign_bundle(bundle_copy, private)
    rewrite(bundle_copy, lambda data: data.update(note="added after signing"))
    with pytest.raises(BundleError, match="signature"):
        open_bundle(bundle_copy, trust)
