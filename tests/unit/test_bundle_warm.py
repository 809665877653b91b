"""``python -m pipeline.bundle warm``: what it refuses, and how it writes a cache into a copy.

The compile-and-verify part needs TensorRT-RTX engines on a GPU: tests/gpu/test_rtx_runner.py
(``test_bundle_warm_writes_a_copy_whose_cache_hits_in_a_fresh_process_when_the_cache_was_missing``).
Here: the refusals decided from the manifest and the host, and the step that writes the cache into
the copy, with bytes standing in for a real cache.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.bundle import __main__ as bundle_tool
from pipeline.bundle.warm import (
    copy_bundle,
    warm_bundle,
    warm_refusal,
    warm_target_name,
    write_runtime_cache,
)
from pipeline.errors import BundleError
from pipeline.runtime.base import SavedArtifact
from pipeline.runtime.engine_graph import EngineRecord
from pipeline.runtime.format import (
    RUNTIME_CACHE_NAME,
    SIGNATURE_NAME,
    Manifest,
    describe_files,
    read_manifest,
    write_manifest,
)
from pipeline.runtime.loader import open_bundle
from pipeline.runtime.policy import RuntimeConfig
from pipeline.runtime.trust import TrustPolicy, generate_key_pair, sign_bundle
from pipeline.stages.package import PublishedBundle
from tests.helpers import sample_manifest, tree_digest

HOST = {
    "tensorrt_build": "tensorrt-rtx",
    "tensorrt": "1.4.0.76",
    "cuda": "13.0",
    "sm": "8.6",
    "torch_tensorrt": "2.11.0",
}
BUILT_ON = {**HOST, "sm": "9.0"}
KEY = {"tensorrt_build": "tensorrt-rtx", "tensorrt": "1.4.0.76", "cuda": "13.0", "sm": "8.6"}


def rtx_artifact() -> SavedArtifact:
    record = EngineRecord(
        "e_engine", "engines/e.engine", 3, 1, ["8", "n", "0", "", "x", "y", "0", "", "", "0"]
    )
    return SavedArtifact("model/graph.pt", [record], RUNTIME_CACHE_NAME, dict(KEY, sm="9.0"))


def rtx_manifest(**fields: Any) -> Manifest:
    values: dict[str, Any] = {"backend": "tensorrt", "device": "cuda:0", "environment": BUILT_ON}
    return sample_manifest(**{**values, "engine_count": 1, **fields})


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[bytes, bytes]:
    generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    return (tmp_path / "key.pem").read_bytes(), (tmp_path / "key.pub").read_bytes()


def test_bundle_warm_refuses_in_one_line_when_the_bundle_is_not_tensorrt(
    cnn_bundle: PublishedBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(cnn_bundle.path)
    siblings = set(cnn_bundle.path.parent.iterdir())
    assert bundle_tool.main(["warm", str(cnn_bundle.path)]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    message = " ".join(captured.err.split())  # the console may wrap a long line
    assert "cannot warm" in message and "not a TensorRT bundle (backend export)" in message, message
    assert tree_digest(cnn_bundle.path) == before
    assert set(cnn_bundle.path.parent.iterdir()) == siblings


def test_warm_refusal_allows_rtx_engines_when_the_own_runner_runs_them_here() -> None:
    manifest = rtx_manifest()
    assert warm_refusal(manifest, HOST, RuntimeConfig(), rtx_artifact(), rtx_importable=True) is None


@pytest.mark.parametrize(
    ("built", "host", "policy", "importable", "expected"),
    [
        ({**BUILT_ON, "tensorrt_build": "tensorrt"}, HOST, "auto", True, "not TensorRT-RTX's"),
        (BUILT_ON, {**HOST, "tensorrt_build": "tensorrt"}, "auto", True, "this host's TensorRT is tensorrt"),
        (BUILT_ON, HOST, "off", True, "runtime_cache=off"),
        (BUILT_ON, HOST, "auto", False, "would not run on the own runner here: the TensorRT-RTX Python"),
        (BUILT_ON, {**HOST, "torch_tensorrt": "2.13.0"}, "auto", True, "would not run on the own runner"),
    ],
    ids=["standard-engines", "standard-host", "cache-off", "no-bindings", "native-runtime-config"],
)
def test_warm_refusal_says_why_in_one_line_when_warming_cannot_apply(
    built: dict[str, str], host: dict[str, str], policy: str, importable: bool, expected: str
) -> None:
    manifest = rtx_manifest(environment=built)
    refusal = warm_refusal(manifest, host, RuntimeConfig(runtime_cache=policy), rtx_artifact(), importable)
    assert refusal is not None and expected in refusal and "\n" not in refusal, refusal


def test_warm_refusal_names_the_backend_when_the_bundle_is_an_export() -> None:
    refusal = warm_refusal(sample_manifest(), HOST, RuntimeConfig(), rtx_artifact(), rtx_importable=True)
    assert refusal == "not a TensorRT bundle (backend export): it has no engines to warm"


def test_warm_target_name_ends_in_the_host_sm_and_keeps_the_archive_kind_when_made_from_an_archive(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "bert-fp16-standard-tensorrt-0123.tar.gz"
    archive.write_bytes(b"")
    assert warm_target_name(tmp_path / "bert-x-0123", HOST) == "bert-x-0123-warm-sm86"
    assert warm_target_name(archive, HOST) == "bert-fp16-standard-tensorrt-0123-warm-sm86.tar.gz"


def test_write_runtime_cache_signs_a_copy_and_leaves_the_source_alone_when_given_a_key(
    bundle_copy: Path, tmp_path: Path, key_pair: tuple[bytes, bytes]
) -> None:
    private, public = key_pair
    sign_bundle(bundle_copy, private)  # a signed source: its signature must not travel to the copy
    before = tree_digest(bundle_copy)
    target = tmp_path / "warm"
    copy_bundle(bundle_copy, target)
    manifest = write_runtime_cache(target, b"kernels", KEY, private)

    assert tree_digest(bundle_copy) == before
    assert manifest.runtime_cache == {"file": RUNTIME_CACHE_NAME, "key": KEY}
    assert (target / RUNTIME_CACHE_NAME).read_bytes() == b"kernels"
    assert read_manifest(target).files == describe_files(target)
    assert manifest.bundle_id == read_manifest(bundle_copy).bundle_id  # same engines, same id
    opened = open_bundle(target, TrustPolicy(trusted_keys=(public,), require_signature=True)).manifest
    assert opened.runtime_cache["key"] == KEY


def test_write_runtime_cache_leaves_the_copy_unsigned_when_no_key_is_given(
    bundle_copy: Path, tmp_path: Path, key_pair: tuple[bytes, bytes]
) -> None:
    sign_bundle(bundle_copy, key_pair[0])
    target = tmp_path / "warm"
    copy_bundle(bundle_copy, target)
    write_runtime_cache(target, b"kernels", KEY)

    assert not (target / SIGNATURE_NAME).exists()
    open_bundle(target, TrustPolicy())
    with pytest.raises(BundleError, match="unsigned and this host requires signatures"):
        open_bundle(target, TrustPolicy(require_signature=True))


def test_write_runtime_cache_replaces_the_shipped_cache_when_the_copy_had_one(
    bundle_copy: Path, tmp_path: Path
) -> None:
    target = tmp_path / "warm"
    copy_bundle(bundle_copy, target)
    write_runtime_cache(target, b"built-host kernels", {**KEY, "sm": "9.0"})
    write_runtime_cache(target, b"this host's kernels", KEY)
    opening = open_bundle(target, TrustPolicy())
    manifest, files = opening.manifest, opening.files
    assert manifest.runtime_cache["key"] == KEY
    assert files.read(RUNTIME_CACHE_NAME) == b"this host's kernels"


def test_write_runtime_cache_refuses_when_the_cache_is_empty(bundle_copy: Path, tmp_path: Path) -> None:
    target = tmp_path / "warm"
    shutil.copytree(bundle_copy, target)
    before = tree_digest(target)
    with pytest.raises(BundleError, match="runtime cache is empty"):
        write_runtime_cache(target, b"", KEY)
    assert tree_digest(target) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a host without a GPU")
def test_warm_bundle_refuses_in_one_line_and_writes_nothing_when_no_gpu_is_visible(
    bundle_copy: Path,
) -> None:
    manifest = read_manifest(bundle_copy)
    manifest.backend, manifest.environment = "tensorrt", BUILT_ON  # an unsigned copy, rewritten
    write_manifest(bundle_copy, manifest)
    before, siblings = tree_digest(bundle_copy), set(bundle_copy.parent.iterdir())
    with pytest.raises(BundleError, match="no CUDA GPU is visible") as refused:
        warm_bundle(bundle_copy)
    assert "\n" not in str(refused.value)
    assert tree_digest(bundle_copy) == before and set(bundle_copy.parent.iterdir()) == siblings


@pytest.mark.parametrize(
    ("key_file", "message"),
    [
        ("missing.pem", "--key .*missing.pem: No such file or directory"),
        ("public.pem", "signing key: not an unencrypted PEM private key"),
    ],
)
def test_bundle_warm_says_what_is_wrong_with_the_key_before_any_work_when_the_key_is_bad(
    cnn_bundle: PublishedBundle,
    key_pair: tuple[bytes, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key_file: str,
    message: str,
) -> None:
    (tmp_path / "public.pem").write_bytes(key_pair[1])
    siblings = set(cnn_bundle.path.parent.iterdir())
    assert bundle_tool.main(["warm", str(cnn_bundle.path), "--key", str(tmp_path / key_file)]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert set(cnn_bundle.path.parent.iterdir()) == siblings
