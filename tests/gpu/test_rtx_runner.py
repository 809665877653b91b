"""The own TensorRT-RTX runner and the runtime cache on real engines (TensorRT-RTX hosts only).

Reuses the suite's bundles (tests/gpu/test_tensorrt_bundles.py builds them once): the cache the
verify stage shipped is hit in a fresh process, missed (with its reason) in a copy without it or
with its key altered, and refused when tampered; the new policy fields come back in a fresh
process; the runner gives golden outputs under every policy and under the concurrency hammer;
`python -m pipeline.bundle warm` makes a copy whose cache (made here) hits in a fresh process.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from pipeline import load_bundle
from pipeline.bundle.warm import WARM_SUFFIX, warm_bundle
from pipeline.errors import BundleError
from pipeline.runtime.format import (
    RUNTIME_CACHE_NAME,
    SIGNATURE_NAME,
    describe_files,
    read_manifest,
    write_manifest,
)
from pipeline.runtime.loader import verify_loaded
from pipeline.runtime.policy import KernelSpecialization, RuntimeConfig, runtime_preset
from pipeline.runtime.tensorrt import OWN_RUNNER, installed_tensorrt_build
from pipeline.runtime.trust import generate_key_pair
from tests.gpu.probe import probe_in_fresh_process
from tests.gpu.test_concurrency import CALLS, THREADS, hammer
from tests.gpu.test_tensorrt_bundles import MODELS, RUNTIMES, build
from tests.helpers import flip_byte, tree_digest


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From package metadata: loading the runtime library before the first build would make the
    # build's `import torch_tensorrt` impossible in this process.
    if installed_tensorrt_build() != "tensorrt-rtx":
        pytest.skip("the own runner and runtime caches are TensorRT-RTX's")
    return tmp_path_factory.mktemp("gpu-rtx-runner")


def bundle_path(artifacts: Path, policy: str = "standard") -> Path:
    model, precision = MODELS[0]
    bundle = build(artifacts, (model, precision, policy)).bundle
    assert bundle is not None
    return bundle.path


def copy_of(source: Path, target: Path) -> Path:
    """A copy whose manifest a test may rewrite: unsigned (a rewritten manifest breaks a signature)."""
    shutil.copytree(source, target)
    (target / SIGNATURE_NAME).unlink(missing_ok=True)
    return target


def test_verify_stage_ships_a_keyed_runtime_cache_when_built_on_tensorrt_rtx(artifacts: Path) -> None:
    manifest = read_manifest(bundle_path(artifacts))
    assert manifest.runtime_cache["file"] == RUNTIME_CACHE_NAME
    assert set(manifest.runtime_cache["key"]) == {"sm", "tensorrt", "cuda", "tensorrt_build"}
    assert RUNTIME_CACHE_NAME in {f.path for f in manifest.files}


def test_fresh_process_hits_the_shipped_cache_when_the_key_matches(artifacts: Path, tmp_path: Path) -> None:
    report = probe_in_fresh_process(bundle_path(artifacts), cwd=tmp_path)
    assert report["load_report_engines"]["runner"] == OWN_RUNNER
    assert report["load_report_engines"]["runtime_cache"] == "hit"
    assert report["golden_passed"], report["golden"]


def test_load_misses_with_a_reason_when_the_cache_is_removed_from_a_copy(
    artifacts: Path, tmp_path: Path
) -> None:
    root = copy_of(bundle_path(artifacts), tmp_path / "uncached")
    (root / RUNTIME_CACHE_NAME).unlink()
    manifest = read_manifest(root)
    manifest.runtime_cache = {}
    manifest.files = describe_files(root)
    write_manifest(root, manifest)
    with load_bundle(root) as model:
        assert model.load_report["engines"]["runtime_cache"] == "miss: the bundle has no runtime cache"
        assert verify_loaded(model).passed


def test_load_misses_with_a_reason_when_the_cache_key_names_another_gpu(
    artifacts: Path, tmp_path: Path
) -> None:
    root = copy_of(bundle_path(artifacts), tmp_path / "other-gpu")
    manifest = read_manifest(root)
    manifest.runtime_cache["key"]["sm"] = "8.6"  # an unsigned copy, its manifest rewritten
    write_manifest(root, manifest)
    with load_bundle(root) as model:
        reason = model.load_report["engines"]["runtime_cache"]
        assert reason.startswith("miss: cache made for sm '8.6'"), reason
        assert verify_loaded(model).passed


def test_load_refuses_a_tampered_runtime_cache_before_any_engine_loads(
    artifacts: Path, tmp_path: Path
) -> None:
    root = copy_of(bundle_path(artifacts), tmp_path / "tampered")
    flip_byte(root / RUNTIME_CACHE_NAME)
    with pytest.raises(BundleError, match=r"runtime\.cache: sha256 does not match"):
        load_bundle(root)


def test_rtx_policy_fields_come_back_in_a_fresh_process_when_set_at_load(
    artifacts: Path, tmp_path: Path
) -> None:
    policy = RuntimeConfig(
        name="eager", pre_allocated_outputs=True, kernel_specialization=KernelSpecialization.eager
    )
    with load_bundle(bundle_path(artifacts), runtime=policy) as model:
        assert model.policy.kernel_specialization is KernelSpecialization.eager
    report = probe_in_fresh_process(bundle_path(artifacts, "preallocated"), cwd=tmp_path)
    states = list(report["engines"].values())
    assert states and all(s["runner"] == "tensorrt_rtx" and s["pre_allocated_outputs"] for s in states)


@pytest.mark.parametrize("policy", RUNTIMES)
def test_own_runner_matches_golden_outputs_when_run_under_each_policy(artifacts: Path, policy: str) -> None:
    with load_bundle(bundle_path(artifacts), runtime=policy) as model:
        assert model.load_report["engines"]["runner"] == OWN_RUNNER
        assert model.policy == runtime_preset(policy)
        assert verify_loaded(model).passed
        model.set_runtime(RuntimeConfig(name="eager", kernel_specialization=KernelSpecialization.eager))
        assert verify_loaded(model).passed


@pytest.mark.parametrize("policy", ["preallocated", "cudagraphs", "dynamic"])
def test_own_runner_gives_every_thread_its_own_answer_when_hammered(artifacts: Path, policy: str) -> None:
    with load_bundle(bundle_path(artifacts), runtime=policy) as model:
        assert model.load_report["engines"]["runner"] == OWN_RUNNER
        counts = hammer([model])
    assert counts == {"at return: right": THREADS * CALLS, "at the end: right": THREADS * CALLS}, counts


def test_cpp_runtime_still_runs_the_bundle_when_runtime_cache_is_off(artifacts: Path) -> None:
    with load_bundle(bundle_path(artifacts), runtime=RuntimeConfig(runtime_cache="off")) as model:  # type: ignore[arg-type]
        assert model.load_report["engines"]["runner"] != OWN_RUNNER
        assert verify_loaded(model).passed
    torch.cuda.synchronize()


def test_bundle_warm_writes_a_copy_whose_cache_hits_in_a_fresh_process_when_the_cache_was_missing(
    artifacts: Path, tmp_path: Path
) -> None:
    source = copy_of(bundle_path(artifacts), tmp_path / "cold")
    (source / RUNTIME_CACHE_NAME).unlink()
    manifest = read_manifest(source)
    manifest.runtime_cache = {}
    manifest.files = describe_files(source)
    write_manifest(source, manifest)
    before = tree_digest(source)
    # Signing the copy is covered on CPU (tests/unit/test_bundle_warm.py); the GPU host has no
    # `cryptography`, so there the copy is written unsigned.
    signing = importlib.util.find_spec("cryptography") is not None
    key = None
    if signing:
        generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
        key = (tmp_path / "key.pem").read_bytes()

    result = warm_bundle(source, private_key_pem=key)

    assert result.written and result.signed == signing and result.cache_bytes > 0
    assert result.path.parent == tmp_path and result.path.name.startswith("cold" + WARM_SUFFIX)
    assert result.load_engines["runtime_cache"] == "hit", result.load_engines
    assert tree_digest(source) == before
    warmed = read_manifest(result.path)
    assert warmed.runtime_cache["key"] == result.cache_key and warmed.bundle_id == manifest.bundle_id
    report = probe_in_fresh_process(result.path, cwd=tmp_path)
    assert report["load_report_engines"]["runner"] == OWN_RUNNER
    assert report["load_report_engines"]["runtime_cache"] == "hit", report["load_report_engines"]
    assert report["golden_passed"], report["golden"]
    again = warm_bundle(result.path)  # its cache is for this host now: nothing to write
    assert not again.written and again.path == result.path
