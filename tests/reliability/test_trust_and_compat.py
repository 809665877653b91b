"""Signatures under the host's trust policy, and the table-driven compatibility gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import load_bundle
from pipeline.config import BackendKind
from pipeline.errors import PipelineError
from pipeline.runtime.compat import compatibility_problems
from pipeline.runtime.format import SIGNATURE_NAME
from pipeline.runtime.trust import TrustPolicy, generate_key_pair, sign_bundle
from pipeline.stages.package import PublishedBundle
from tests.reliability.conftest import Tally
from tests.reliability.helpers import fresh_copy, rewrite_manifest, spy_deserializers

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("keys")
    pems = {}
    for name in ("trusted", "stranger"):
        generate_key_pair(directory / f"{name}.key", directory / f"{name}.pem")
        pems[name] = (directory / f"{name}.key").read_bytes()
        pems[f"{name}.pub"] = (directory / f"{name}.pem").read_bytes()
    return pems


def signed_copy(bundle: PublishedBundle, directory: Path, key: bytes) -> Path:
    root = fresh_copy(bundle, directory)
    sign_bundle(root, key)
    return root


def test_signed_bundle_loads_when_signed_by_a_trusted_key(
    cnn_bundle: PublishedBundle, tmp_path: Path, keys: dict[str, bytes]
) -> None:
    root = signed_copy(cnn_bundle, tmp_path, keys["trusted"])
    policy = TrustPolicy(trusted_keys=(keys["stranger.pub"], keys["trusted.pub"]), require_signature=True)
    assert load_bundle(root, trust=policy).manifest.bundle_id == cnn_bundle.manifest.bundle_id


def test_trust_policy_comes_from_host_environment_when_configured(
    tmp_path: Path, keys: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.pem").write_bytes(keys["trusted.pub"])
    monkeypatch.setenv("PIPELINE_TRUSTED_KEYS", str(tmp_path))
    monkeypatch.setenv("PIPELINE_REQUIRE_SIGNATURE", "1")
    policy = TrustPolicy.from_environment()
    assert policy.trusted_keys == (keys["trusted.pub"],) and policy.require_signature


def attacks(keys: dict[str, bytes]) -> dict[str, tuple[str, Callable[[Path], None], TrustPolicy]]:
    trusted = TrustPolicy(trusted_keys=(keys["trusted.pub"],), require_signature=True)
    return {
        "wrong key": ("trusted", lambda root: None, TrustPolicy((keys["stranger.pub"],), True)),
        "signed by an untrusted key": ("stranger", lambda root: None, trusted),
        "truncated signature": (
            "trusted",
            lambda root: (root / SIGNATURE_NAME).write_bytes((root / SIGNATURE_NAME).read_bytes()[:40]),
            trusted,
        ),
        "manifest edited after signing": (
            "trusted",
            lambda root: rewrite_manifest(root, model_name="evil"),
            trusted,
        ),
        "unsigned when required": ("trusted", lambda root: (root / SIGNATURE_NAME).unlink(), trusted),
        "required without trusted keys": ("trusted", lambda root: None, TrustPolicy((), True)),
    }


@pytest.mark.parametrize(
    "attack",
    [
        "wrong key",
        "signed by an untrusted key",
        "truncated signature",
        "manifest edited after signing",
        "unsigned when required",
        "required without trusted keys",
    ],
)
def test_load_bundle_refuses_before_deserializing_when_signature_fails(
    attack: str,
    cnn_bundle: PublishedBundle,
    tmp_path: Path,
    keys: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    tally: Callable[[str], Tally],
) -> None:
    signer, damage, policy = attacks(keys)[attack]
    root = signed_copy(cnn_bundle, tmp_path, keys[signer])
    damage(root)
    calls = spy_deserializers(monkeypatch)
    check = tally("signatures (wrong key, truncated, edited, unsigned)")
    message = check.expect_rejected(
        lambda: load_bundle(root, trust=policy), mentions=SIGNATURE_NAME, untouched=lambda: calls == []
    )
    assert message and calls == []


H200_RTX_211 = {
    "torch": "2.11.0+cu130",
    "torch_tensorrt": "2.11.0",
    "tensorrt": "1.4.0.76",
    "tensorrt_build": "tensorrt-rtx",
    "sm": "9.0",
    "platform": "x86_64",
    "gpu": "NVIDIA H200",
}
# (label, host fingerprint changes, built hardware_compatible, words the refusal must contain)
TABLE: list[tuple[str, dict[str, str], bool, list[str]]] = [
    ("same host", {}, False, []),
    ("H100: same SM, same stack", {"gpu": "NVIDIA H100 80GB HBM3"}, False, []),
    (
        "A100: SM 8.0",
        {"sm": "8.0", "gpu": "NVIDIA A100"},
        False,
        ["SM '9.0'", "SM '8.0'", "hardware_compatible"],
    ),
    ("A100, hardware-compatible engines", {"sm": "8.0"}, True, []),
    ("T4 (SM 7.5), hardware-compatible engines", {"sm": "7.5"}, True, ["SM >= 8.0", "'7.5'"]),
    (
        "torch_tensorrt 2.14 (engine ABI 10)",
        {"torch_tensorrt": "2.14.0", "torch": "2.14.1"},
        False,
        ["'2.11.0'", "'2.14.0'"],
    ),
    (
        "standard TensorRT build",
        {"tensorrt_build": "tensorrt", "tensorrt": "10.14.1"},
        False,
        ["TensorRT build", "TensorRT version"],
    ),
    ("TensorRT-RTX 1.5", {"tensorrt": "1.5.0.1"}, False, ["'1.4.0.76'", "'1.5.0.1'"]),
    ("aarch64 host", {"platform": "aarch64"}, False, ["platform"]),
]


@pytest.mark.parametrize(
    ("label", "host_changes", "hardware_compatible", "words"), TABLE, ids=[t[0] for t in TABLE]
)
def test_compatibility_gate_decides_from_fingerprints_when_hosts_differ(
    label: str,
    host_changes: dict[str, str],
    hardware_compatible: bool,
    words: list[str],
    tally: Callable[[str], Tally],
) -> None:
    problems = compatibility_problems(
        BackendKind.tensorrt, H200_RTX_211, {**H200_RTX_211, **host_changes}, hardware_compatible
    )
    text = " | ".join(problems)
    check = tally("compatibility gate (recorded fingerprints)")
    # One row of the table, one observation: a host that must be refused, or one that must not.
    named = all(word in text for word in words) and "rebuild the bundle on this host" in text
    if words:
        check.count(rejected=bool(problems) and named)
    else:
        check.count_valid(accepted=not problems)
    assert bool(problems) == bool(words), text
    for word in words:
        assert word in text
    if problems:
        assert "rebuild the bundle on this host" in text


def test_export_gate_refuses_bundle_from_newer_torch_unless_forced(
    cnn_bundle: PublishedBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tally: Callable[[str], Tally],
) -> None:
    root = fresh_copy(cnn_bundle, tmp_path)
    rewrite_manifest(root, environment={**cnn_bundle.manifest.environment, "torch": "9.9.0"})
    check = tally("compatibility gate (recorded fingerprints)")
    calls = spy_deserializers(monkeypatch)
    check.expect_rejected(lambda: load_bundle(root), mentions="torch 9.9.0", untouched=lambda: calls == [])
    assert calls == [] and check.wrongly_accepted == 0
    monkeypatch.undo()
    assert load_bundle(root, force=True).manifest.environment["torch"] == "9.9.0"


def test_tensorrt_bundle_is_refused_cleanly_when_host_has_no_gpu(
    cnn_bundle: PublishedBundle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tally: Callable[[str], Tally],
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks a host without a GPU")
    root = fresh_copy(cnn_bundle, tmp_path)
    rewrite_manifest(root, backend="tensorrt", environment=H200_RTX_211)
    calls = spy_deserializers(monkeypatch)
    check = tally("compatibility gate (recorded fingerprints)")
    check.expect_rejected(
        lambda: load_bundle(root), mentions="TensorRT engines", untouched=lambda: calls == []
    )
    assert calls == [] and check.wrongly_accepted == 0


def _not_a_key(directory: Path) -> Path:
    path = directory / "notes.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    return path


def _rsa_key(directory: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = directory / "rsa.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


# (label, what PIPELINE_TRUSTED_KEYS names, given a scratch directory)
UNREADABLE_TRUST: list[tuple[str, Callable[[Path], Path]]] = [
    ("missing file", lambda d: d / "typo" / "trusted.pem"),
    ("empty directory", lambda d: (d / "empty").mkdir() or d / "empty"),
    ("not a PEM key", _not_a_key),
    ("an RSA key", _rsa_key),
]


@pytest.mark.parametrize("label", [label for label, _ in UNREADABLE_TRUST])
def test_load_bundle_refuses_every_bundle_in_one_line_when_the_trust_source_cannot_be_read(
    label: str,
    cnn_bundle: PublishedBundle,
    tmp_path: Path,
    keys: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    tally: Callable[[str], Tally],
) -> None:
    trust_path = dict(UNREADABLE_TRUST)[label](tmp_path)
    signed = signed_copy(cnn_bundle, tmp_path, keys["trusted"])
    monkeypatch.setenv("PIPELINE_TRUSTED_KEYS", str(trust_path))
    calls = spy_deserializers(monkeypatch)
    check = tally("trust source unreadable (missing, empty, not a key): fails closed")
    for bundle in (signed, cnn_bundle.path):  # signed or not: nothing loads on a broken trust setup
        message = check.expect_rejected(
            lambda bundle=bundle: load_bundle(bundle), mentions=str(trust_path), untouched=lambda: calls == []
        )
        assert message and "\n" not in message and "PIPELINE_TRUSTED_KEYS" in message, message


def test_load_bundle_refuses_in_one_line_when_require_signature_is_neither_true_nor_false(
    cnn_bundle: PublishedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_REQUIRE_SIGNATURE", "sometimes")
    with pytest.raises(PipelineError, match="PIPELINE_REQUIRE_SIGNATURE='sometimes'"):
        load_bundle(cnn_bundle.path)


def test_loaded_bundle_names_the_key_that_verified_it_when_signed_and_trusted(
    cnn_bundle: PublishedBundle, tmp_path: Path, keys: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "release.pem").write_bytes(keys["trusted.pub"])
    monkeypatch.setenv("PIPELINE_TRUSTED_KEYS", str(tmp_path / "keys"))
    root = signed_copy(cnn_bundle, tmp_path, keys["trusted"])
    with load_bundle(root) as loaded:
        assert loaded.signature.verified_by.startswith(str(tmp_path / "keys" / "release.pem"))
        assert "sha256:" in loaded.load_report["signature"]
    with load_bundle(cnn_bundle.path) as unsigned:
        assert unsigned.signature.describe() == "unsigned"
