"""The bundle format, in one place.

A bundle is a directory (or a .tar or .tar.gz of one)::

    <model>-<precision>-<runtime>-<backend>-<id>/
        manifest.json         what this is, how it was built, how to run it, every file's sha256
        config.yaml           the resolved pipeline config
        golden.safetensors    golden inputs ("input.<name>") and reference outputs ("output.<i>")
                              at the opt shape; models with dynamic dimensions also hold sets at
                              other shapes ("<set>/input.<name>", "<set>/output.<i>": min, max, odd)
        model/model.pt2       export: the torch.export archive
        model/graph.pt        tensorrt: the graph that calls the engines, without them
        engines/<name>.engine tensorrt: each engine's raw bytes (its other fields: manifest "engines")
        engines/runtime.cache TensorRT-RTX: the runtime cache (compiled kernels) made at the verify
                              stage; manifest "runtime_cache" holds its file and host key
        calibration.json      quantized precisions (fp8, int8, ...): how the model was calibrated
                              and each quantizer's amax, so the bundle can be rebuilt and checked

``manifest.json`` is the only file read before every other file's size and sha256 are checked;
the other files are read once, hashed while read, and what was hashed is what gets loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import BundleError

# 2: TensorRT engines as raw files (engines/*.engine) beside an engine-free graph.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "config.yaml"
GOLDEN_NAME = "golden.safetensors"
RUNTIME_CACHE_NAME = "engines/runtime.cache"
CALIBRATION_NAME = "calibration.json"
DIGEST_KEY = "manifest_sha256"
SIGNATURE_NAME = "manifest.sig"
# Files that a manifest cannot list: itself, and a signature made over it.
UNLISTED = (MANIFEST_NAME, SIGNATURE_NAME)
GOLDEN_INPUT_PREFIX = "input."
GOLDEN_OUTPUT_PREFIX = "output."
#: The golden set at the inputs' declared (opt) shape; its keys carry no set prefix.
OPT_SET = "opt"
_HASH_CHUNK = 8 << 20


@dataclass
class FileEntry:
    """One file of a bundle, relative to its root."""

    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """Everything a host needs to know about a bundle before and after loading it."""

    format_version: int
    pipeline_version: str
    bundle_id: str
    created_at: str
    backend: str
    device: str
    precision: str
    model_name: str
    model_file: str
    environment: dict[str, str]
    config: dict[str, Any]
    overrides: list[str]
    compile_settings: dict[str, Any]
    runtime: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    verification: dict[str, Any]
    weights: dict[str, Any]
    engine_count: int
    timings: dict[str, float] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    #: One entry per TensorRT engine file (``EngineRecord.to_dict()``); empty for export bundles.
    engines: list[dict[str, Any]] = field(default_factory=list)
    #: TensorRT-RTX: ``{"file": ..., "key": {sm, tensorrt, cuda, tensorrt_build}}`` of the runtime
    #: cache shipped in the bundle; empty when it has none (and in bundles made before caches).
    runtime_cache: dict[str, Any] = field(default_factory=dict)
    files: list[FileEntry] = field(default_factory=list)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) with its own digest, as written to ``manifest.json``."""
        data = asdict(self)
        data[DIGEST_KEY] = _content_digest(data)
        return canonical_json(data)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse ``manifest.json``; anything malformed raises :class:`BundleError`."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{MANIFEST_NAME}: expected a JSON object")
        # The manifest lists every other file's sha256; this digest covers the manifest itself,
        # so that no byte of a bundle can change unnoticed.
        if data.pop(DIGEST_KEY, None) != _content_digest(data):
            raise BundleError(
                f"{MANIFEST_NAME}: content does not match its {DIGEST_KEY} (modified or corrupt)"
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            overrides = data.get("overrides")
            rebuild = (
                "python -m pipeline " + " ".join(map(str, overrides)) if isinstance(overrides, list) else ""
            )
            raise BundleError(
                f"{MANIFEST_NAME}: format_version {version!r}, this pipeline reads {FORMAT_VERSION}"
                + (f"; rebuild the bundle: {rebuild.strip()}" if rebuild else "")
            )
        expected = {f.name: f for f in fields(cls)}
        required = [
            name
            for name, f in expected.items()
            if f.default is NO_DEFAULT and f.default_factory is NO_DEFAULT
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise BundleError(f"{MANIFEST_NAME}: missing fields {missing}")
        try:
            files = [FileEntry(**entry) for entry in data.get("files", [])]
        except TypeError as exc:
            raise BundleError(f"{MANIFEST_NAME}: malformed file entry ({exc})") from None
        values = {name: data[name] for name in expected if name in data and name != "files"}
        manifest = cls(**values, files=files)
        _check_types(manifest)
        return manifest


def _content_digest(data: dict[str, Any]) -> str:
    canonical = json.dumps(
        {k: v for k, v in data.items() if k != DIGEST_KEY}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_types(manifest: Manifest) -> None:
    checks: dict[str, type | tuple[type, ...]] = {
        "bundle_id": str,
        "backend": str,
        "device": str,
        "precision": str,
        "model_file": str,
        "environment": dict,
        "config": dict,
        "runtime": dict,
        "inputs": list,
        "outputs": list,
        "verification": dict,
        "engine_count": int,
        "engines": list,
        "runtime_cache": dict,
    }
    for name, kind in checks.items():
        if not isinstance(getattr(manifest, name), kind):
            raise BundleError(f"{MANIFEST_NAME}: field {name!r} has the wrong type")
    for entry in manifest.files:
        if not (
            isinstance(entry.path, str) and isinstance(entry.size, int) and isinstance(entry.sha256, str)
        ):
            raise BundleError(f"{MANIFEST_NAME}: malformed file entry {entry.path!r}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(root: Path) -> list[FileEntry]:
    """Every file under ``root`` except the manifest, with size and sha256, in path order."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative not in UNLISTED:
            entries.append(FileEntry(relative, path.stat().st_size, sha256_file(path)))
    return entries


def read_manifest(root: Path) -> Manifest:
    """Read and parse ``root/manifest.json`` (nothing else is read)."""
    return read_manifest_as_written(root)[0]


def read_manifest_as_written(root: Path) -> tuple[Manifest, bytes]:
    """:func:`read_manifest`, and the bytes it was parsed from: a signature covers those bytes,
    not this version's serialization of them (a bundle made before a field was added lacks it)."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME}; not a bundle")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{MANIFEST_NAME}: not UTF-8 text (modified or corrupt)") from None
    manifest = Manifest.from_json(text)
    # Byte-exact: whitespace or a dropped newline changes no value, but it is still a changed file.
    # Checked against the fields as written, not as this version would write them: a bundle made
    # before a field was added (read with its default) is not a modified one.
    if canonical_json(json.loads(text)) != text:
        raise BundleError(f"{MANIFEST_NAME}: not in canonical form (modified)")
    return manifest, raw


def canonical_json(data: dict[str, Any]) -> str:
    """The one text a manifest's data is written as (sorted keys, two-space indent, newline)."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


class VerifiedFiles:
    """Contents of bundle files, kept as read while their sha256 was checked.

    Loading from these bytes (not from the files again) means what was verified is exactly
    what gets deserialized, and a 200+ MB engine is read from disk once.
    """

    def __init__(self, contents: dict[str, bytes]) -> None:
        self._contents = contents

    def read(self, relative: str) -> bytes:
        """The verified bytes of ``relative``."""
        try:
            return self._contents[relative]
        except KeyError:
            raise BundleError(f"{relative}: not among the verified files of this bundle") from None


def check_files(root: Path, manifest: Manifest, model_files: Collection[str]) -> VerifiedFiles:
    """Check every listed file's size and sha256, and that no unlisted file exists.

    ``model_files`` (the files the model is loaded from) must be listed; they are read into
    memory whole, hashed there and returned, the others are hashed in a stream. Raises
    :class:`BundleError` naming the first offending file.
    """
    listed = {entry.path for entry in manifest.files}
    kept: dict[str, bytes] = {}
    for entry in manifest.files:
        path = (root / entry.path).resolve()
        if not path.is_relative_to(root.resolve()) or entry.path in UNLISTED:
            raise BundleError(f"{entry.path}: file path escapes the bundle")
        if (root / entry.path).is_symlink():
            raise BundleError(f"{entry.path}: is a link; bundles hold only regular files")
        if not path.is_file():
            raise BundleError(f"{entry.path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"{entry.path}: size {size} bytes, manifest says {entry.size}")
        if entry.path in model_files:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest() if len(data) == entry.size else ""
        else:
            data, digest = b"", sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(f"{entry.path}: sha256 does not match the manifest (modified or corrupt)")
        if entry.path in model_files:
            kept[entry.path] = data
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if (path.is_file() or path.is_symlink()) and relative not in UNLISTED and relative not in listed:
            raise BundleError(f"{relative}: file not listed in the manifest")
    for needed in model_files:
        if needed not in listed:
            raise BundleError(f"{needed}: a file of the model is not listed in the manifest")
    return VerifiedFiles(kept)


def describe_outputs(outputs: Sequence[Any], names: Sequence[str | None] = ()) -> list[dict[str, Any]]:
    """The ``outputs`` section of a manifest: index, name (None when the model gave none), shape
    and dtype of each output tensor at the opt shape."""
    padded = list(names) + [None] * (len(outputs) - len(names))
    return [
        {"index": i, "name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for i, (t, name) in enumerate(zip(outputs, padded, strict=True))
    ]


def output_names(manifest: Manifest) -> list[str | None]:
    """Each output's recorded name (bundles made before names were recorded: all None)."""
    return [entry.get("name") for entry in manifest.outputs]


GoldenSet = tuple[Sequence[Any], Sequence[Any]]  # (inputs in spec order, reference outputs)


def _golden_prefix(set_name: str) -> str:
    return "" if set_name == OPT_SET else f"{set_name}/"


def golden_tensors(input_names: Sequence[str], sets: Mapping[str, GoldenSet]) -> dict[str, Any]:
    """The contents of ``golden.safetensors`` for golden sets by name (``opt`` first).

    Every entry owns its memory: a model that returns one tensor under two names (tied outputs)
    gets a copy for each name, since safetensors refuses tensors that share storage.
    """
    tensors: dict[str, Any] = {}
    storages: set[int] = set()

    def owned(tensor: Any) -> Any:
        tensor = tensor.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        return tensor

    for set_name, (inputs, outputs) in sets.items():
        prefix = _golden_prefix(set_name)
        for name, tensor in zip(input_names, inputs, strict=True):
            tensors[f"{prefix}{GOLDEN_INPUT_PREFIX}{name}"] = owned(tensor)
        for index, tensor in enumerate(outputs):
            tensors[f"{prefix}{GOLDEN_OUTPUT_PREFIX}{index}"] = owned(tensor)
    return tensors


def golden_sets(
    tensors: dict[str, Any], input_names: Sequence[str], output_count: int
) -> dict[str, GoldenSet]:
    """The golden sets held in ``golden.safetensors`` contents, ``opt`` first."""
    names = [OPT_SET, *sorted({key.split("/", 1)[0] for key in tensors if "/" in key})]
    sets: dict[str, GoldenSet] = {}
    for set_name in names:
        prefix = _golden_prefix(set_name)
        try:
            inputs = [tensors[f"{prefix}{GOLDEN_INPUT_PREFIX}{name}"] for name in input_names]
            outputs = [tensors[f"{prefix}{GOLDEN_OUTPUT_PREFIX}{i}"] for i in range(output_count)]
        except KeyError as exc:
            raise BundleError(f"{GOLDEN_NAME}: golden set {set_name!r} lacks {exc.args[0]!r}") from None
        sets[set_name] = (inputs, outputs)
    return sets


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` and flush it to disk."""
    path = root / MANIFEST_NAME
    with path.open("w", encoding="utf-8") as stream:
        stream.write(manifest.to_json())
        stream.flush()
        os.fsync(stream.fileno())


def bundle_dir_name(model: str, precision: str, runtime: str, backend: str, bundle_id: str) -> str:
    """Directory name of a bundle: readable prefix, content-derived id."""
    return f"{model}-{precision}-{runtime}-{backend}-{bundle_id}"


def bundle_id(identity: dict[str, Any], environment: dict[str, str], weights_sha256: str) -> str:
    """Deterministic id from what decides the artifact: the config's identity (the build side's
    ``pipeline.identity`` chooses it from the schema's marks), environment and weights."""
    payload = json.dumps(
        {"format": FORMAT_VERSION, "config": identity, "env": environment, "weights": weights_sha256},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
