"""Optional ed25519 signatures over a bundle's manifest.

The manifest lists every other file's sha256 and carries its own digest, so a signature over
``manifest.json``'s bytes covers the whole bundle. The signature travels as ``manifest.sig``
(raw 64 bytes). Which public keys are trusted is the host's decision, never the bundle's:

- ``PIPELINE_TRUSTED_KEYS``: a PEM public key file, or a directory of ``*.pem`` files;
- ``PIPELINE_REQUIRE_SIGNATURE=1``: refuse unsigned bundles (also ``load_bundle(require_signature=True)``).

Trust fails closed: once ``PIPELINE_TRUSTED_KEYS`` is set, a path that cannot be read (missing,
unreadable, an empty directory, a file that is not an ed25519 public key) refuses every load,
naming the path, instead of loading with no signature check. The same holds for a value of
``PIPELINE_REQUIRE_SIGNATURE`` that is neither true nor false.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import BundleError, one_line
from pipeline.runtime.format import MANIFEST_NAME, SIGNATURE_NAME

TRUSTED_KEYS_VARIABLE = "PIPELINE_TRUSTED_KEYS"
REQUIRE_SIGNATURE_VARIABLE = "PIPELINE_REQUIRE_SIGNATURE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class TrustPolicy:
    """Trusted public keys (PEM bytes) and whether a signature is required.

    ``key_sources`` names where each key came from (a file), for messages; keys given without
    one are named by their fingerprint alone.
    """

    trusted_keys: tuple[bytes, ...] = ()
    require_signature: bool = False
    key_sources: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls) -> TrustPolicy:
        """The host's policy, from ``PIPELINE_TRUSTED_KEYS`` and ``PIPELINE_REQUIRE_SIGNATURE``.

        Raises :class:`BundleError` (one line, naming the path) when either is set but unusable.
        """
        required_text = os.environ.get(REQUIRE_SIGNATURE_VARIABLE, "").strip().lower()
        if required_text not in _TRUE + _FALSE:
            raise BundleError(
                f"{REQUIRE_SIGNATURE_VARIABLE}={required_text!r}: expected 1/true/yes/on or 0/false/no/off; "
                "refusing to load bundles until it is one of them"
            )
        location = os.environ.get(TRUSTED_KEYS_VARIABLE, "")
        files = _key_files(Path(location)) if location else []
        keys = tuple(_read_public_key(path) for path in files)
        return cls(
            trusted_keys=keys, require_signature=required_text in _TRUE, key_sources=tuple(map(str, files))
        )

    def key_name(self, index: int) -> str:
        """How messages name the trusted key at ``index``: its file and fingerprint."""
        fingerprint = key_fingerprint(self.trusted_keys[index])
        if index < len(self.key_sources):
            return f"{self.key_sources[index]} ({fingerprint})"
        return fingerprint


def _key_files(path: Path) -> list[Path]:
    """The key files ``PIPELINE_TRUSTED_KEYS`` names; :class:`BundleError` when there are none."""
    refused = f"{TRUSTED_KEYS_VARIABLE}={path}"
    try:
        if path.is_dir():
            files = sorted(p for p in path.glob("*.pem"))
            if not files:
                raise BundleError(
                    f"{refused}: the directory holds no *.pem public key; refusing to load bundles"
                )
            return files
        if path.is_file():
            return [path]
    except PermissionError as exc:
        raise BundleError(f"{refused}: cannot be read ({exc.strerror}); refusing to load bundles") from None
    raise BundleError(
        f"{refused}: no such file or directory; refusing to load bundles (trust cannot be checked)"
    )


def _read_public_key(path: Path) -> bytes:
    """The PEM bytes of the ed25519 public key in ``path``; :class:`BundleError` naming the file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    refused = f"{TRUSTED_KEYS_VARIABLE}: {path}"
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise BundleError(
            f"{refused}: cannot be read ({exc.strerror or exc}); refusing to load bundles"
        ) from None
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise BundleError(
            f"{refused}: not a PEM public key ({one_line(exc)}); refusing to load bundles"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{refused}: not an ed25519 public key; refusing to load bundles")
    return pem


def key_fingerprint(public_key_pem: bytes) -> str:
    """``sha256:<16 hex>`` of an ed25519 public key's raw bytes (what ``verify`` names a key by)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        raw = load_pem_public_key(public_key_pem).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    except (ValueError, TypeError):
        raw = public_key_pem
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SignatureCheck:
    """What the signature check of one bundle found.

    ``present``: the bundle carries ``manifest.sig``; ``verified_by``: the trusted key it verified
    with (empty when it was not checked: no trusted key on this host, or none present).
    """

    present: bool = False
    verified_by: str = ""

    def describe(self) -> str:
        """One line for users: signed by which key, signed but not checked here, or unsigned."""
        if self.verified_by:
            return f"signed, verified with {self.verified_by}"
        if self.present:
            return f"signed, NOT checked: this host trusts no key ({TRUSTED_KEYS_VARIABLE} is not set)"
        return "unsigned"


def generate_key_pair(private_path: Path, public_path: Path) -> None:
    """Write a new ed25519 private key (PEM, owner-only) and its public key (PEM).

    Refuses, in one line and before writing anything, an existing file (a key is never
    overwritten) or a directory that does not exist.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for path in (private_path, public_path):
        if path.exists():
            raise BundleError(f"{path}: already exists; keygen never overwrites a key")
        if not path.parent.is_dir():
            raise BundleError(f"{path}: directory {path.parent} does not exist")
    if private_path.resolve() == public_path.resolve():
        raise BundleError(f"{private_path}: the private and public key need two files")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        # Created owner-only: the key is never readable by others, not even for a moment.
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise BundleError(
            f"keygen: cannot write the key pair ({exc.strerror or exc}: {exc.filename})"
        ) from None


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


def public_key_pem(private_key_pem: bytes) -> bytes:
    """The PEM public key of an ed25519 private key (to check a new signature with)."""
    from cryptography.hazmat.primitives import serialization

    pem: bytes = (
        signing_key(private_key_pem)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pem


def sign_bundle(root: Path, private_key_pem: bytes) -> Path:
    """Sign ``root/manifest.json`` with an ed25519 private key; write ``manifest.sig``."""
    key = signing_key(private_key_pem)
    signature = root / SIGNATURE_NAME
    signature.write_bytes(key.sign((root / MANIFEST_NAME).read_bytes()))
    return signature


def check_signature(root: Path, policy: TrustPolicy, manifest_bytes: bytes) -> SignatureCheck:
    """Verify ``manifest.sig`` over ``manifest_bytes`` (the manifest as parsed, not a second read
    of the file) against the trusted keys; say what was found.

    Raises :class:`BundleError` for a bad signature, or for an unsigned bundle when required.
    """
    signature_path = root / SIGNATURE_NAME
    if not signature_path.is_file():
        if policy.require_signature:
            raise BundleError(f"{SIGNATURE_NAME}: bundle is unsigned and this host requires signatures")
        return SignatureCheck()
    if not policy.trusted_keys:
        if policy.require_signature:
            raise BundleError(f"{SIGNATURE_NAME}: signatures are required but no trusted key is configured")
        return SignatureCheck(present=True)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    signature = signature_path.read_bytes()
    for index, pem in enumerate(policy.trusted_keys):
        try:
            key = load_pem_public_key(pem)
        except ValueError:
            raise BundleError("a configured trusted key is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise BundleError("a configured trusted key is not an ed25519 public key")
        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        return SignatureCheck(present=True, verified_by=policy.key_name(index))
    raise BundleError(f"{SIGNATURE_NAME}: signature does not verify with any trusted key")
