"""Optional ed25519 signatures over a bundle's manifest.

The manifest lists every other file's sha256 and carries its own digest, so a signature over
``manifest.json``'s bytes covers the whole bundle. The signature travels as ``manifest.sig``
(raw 64 bytes). Which public keys are trusted is the host's decision, never the bundle's:

- ``PIPELINE_TRUSTED_KEYS``: a PEM public key file, or a directory of ``*.pem`` files;
- ``PIPELINE_REQUIRE_SIGNATURE=1``: refuse unsigned bundles (also ``load_bundle(require_signature=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BundleError, one_line
from pipeline.runtime.format import MANIFEST_NAME, SIGNATURE_NAME


@dataclass(frozen=True)
class TrustPolicy:
    """Trusted public keys (PEM bytes) and whether a signature is required."""

    trusted_keys: tuple[bytes, ...] = ()
    require_signature: bool = False

    @classmethod
    def from_environment(cls) -> TrustPolicy:
        """The host's policy, from ``PIPELINE_TRUSTED_KEYS`` and ``PIPELINE_REQUIRE_SIGNATURE``."""
        location = os.environ.get("PIPELINE_TRUSTED_KEYS", "")
        keys: list[bytes] = []
        if location:
            path = Path(location)
            files = sorted(path.glob("*.pem")) if path.is_dir() else [path]
            keys = [f.read_bytes() for f in files if f.is_file()]
        required = os.environ.get("PIPELINE_REQUIRE_SIGNATURE", "") not in ("", "0", "false")
        return cls(trusted_keys=tuple(keys), require_signature=required)


def generate_key_pair(private_path: Path, public_path: Path) -> None:
    """Write a new ed25519 private key (PEM, owner-only) and its public key (PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def signing_key(private_key_pem: bytes) -> Any:
    """The ed25519 private key in ``private_key_pem``; :class:`BundleError` (one line) if it is
    not one (another kind of key, encrypted, not PEM)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"signing key: not an unencrypted PEM private key ({one_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("signing key is not an ed25519 private key")
    return key


def sign_bundle(root: Path, private_key_pem: bytes) -> Path:
    """Sign ``root/manifest.json`` with an ed25519 private key; write ``manifest.sig``."""
    key = signing_key(private_key_pem)
    signature = root / SIGNATURE_NAME
    signature.write_bytes(key.sign((root / MANIFEST_NAME).read_bytes()))
    return signature


def check_signature(root: Path, policy: TrustPolicy, manifest_bytes: bytes) -> bool:
    """Verify ``manifest.sig`` over ``manifest_bytes`` (the manifest as parsed, not a second read
    of the file) against the trusted keys; return whether the bundle is signed.

    Raises :class:`BundleError` for a bad signature, or for an unsigned bundle when required.
    """
    signature_path = root / SIGNATURE_NAME
    if not signature_path.is_file():
        if policy.require_signature:
            raise BundleError(f"{SIGNATURE_NAME}: bundle is unsigned and this host requires signatures")
        return False
    if not policy.trusted_keys:
        if policy.require_signature:
            raise BundleError(f"{SIGNATURE_NAME}: signatures are required but no trusted key is configured")
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    signature = signature_path.read_bytes()
    message = manifest_bytes
    for pem in policy.trusted_keys:
        try:
            key = load_pem_public_key(pem)
        except ValueError:
            raise BundleError("a configured trusted key is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise BundleError("a configured trusted key is not an ed25519 public key")
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    raise BundleError(f"{SIGNATURE_NAME}: signature does not verify with any trusted key")
