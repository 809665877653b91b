"""Can an artifact built on one host load on this one? Decided from fingerprints alone.

TensorRT engines are tied to the TensorRT build and version, the Torch-TensorRT runtime ABI and,
unless built ``hardware_compatible``, the GPU's SM; export archives need a torch at least as new
as the one that wrote them. The check runs before any engine is deserialized.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from pipeline.runtime.types import BackendKind


class HostKey(str, Enum):
    """The fields of a host fingerprint (a manifest's ``environment``; ``runtime_environment``),
    in one place: what decides whether engines load and whether a runtime cache applies."""

    torch = "torch"
    torch_tensorrt = "torch_tensorrt"
    torch_tensorrt_abi = "torch_tensorrt_abi"
    tensorrt = "tensorrt"
    tensorrt_build = "tensorrt_build"
    cuda = "cuda"
    gpu = "gpu"
    sm = "sm"
    platform = "platform"


# (fingerprint key, what it is); all must match exactly for TensorRT engines (the SM: see below).
TENSORRT_KEYS = (
    (HostKey.tensorrt_build, "TensorRT build"),
    (HostKey.tensorrt, "TensorRT version"),
    (HostKey.torch_tensorrt, "torch_tensorrt version"),
    (HostKey.platform, "platform"),
)
#: What a TensorRT-RTX runtime cache (kernels compiled for one GPU and library) is filed under.
RUNTIME_CACHE_KEYS = (HostKey.tensorrt_build, HostKey.tensorrt, HostKey.cuda, HostKey.sm)
# hardware_compatible engines run on Ampere and newer.
HARDWARE_COMPATIBLE_MIN_SM = (8, 0)
REBUILD = "rebuild the bundle on this host (python -m pipeline ...)"


def version_tuple(version: str, parts: int = 2) -> tuple[int, ...]:
    """The first ``parts`` numbers of a version (``2.11.0+cu130`` -> ``(2, 11)``; an SM ``9.0`` ->
    ``(9, 0)``), a missing or non-numeric piece read as 0, for comparisons."""
    numbers = []
    for piece in version.split("+")[0].split(".")[:parts]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


def compatibility_problems(
    backend: BackendKind,
    built: Mapping[str, str],
    host: Mapping[str, str],
    hardware_compatible: bool = False,
) -> list[str]:
    """Every reason the artifact cannot load here, each with expected vs actual and the fix."""
    problems = []
    if backend is BackendKind.export:
        built_torch, host_torch = built.get(HostKey.torch.value, ""), host.get(HostKey.torch.value, "")
        if version_tuple(built_torch) > version_tuple(host_torch):
            problems.append(
                f"exported with torch {built_torch}, this host has torch {host_torch}: an older torch "
                "cannot read it; upgrade torch or " + REBUILD
            )
        return problems
    for key, label in TENSORRT_KEYS:
        was, now = built.get(key.value), host.get(key.value)
        if was != now:
            problems.append(
                f"{label}: bundle built with {was!r}, this host has {now!r}; "
                "TensorRT engines do not load across these; " + REBUILD
            )
    built_sm, host_sm = built.get(HostKey.sm.value), host.get(HostKey.sm.value)
    if hardware_compatible:
        if version_tuple(host_sm or "0") < HARDWARE_COMPATIBLE_MIN_SM:
            problems.append(
                f"GPU SM: hardware-compatible engines need SM >= 8.0, this host has {host_sm!r}; " + REBUILD
            )
    elif built_sm != host_sm:
        problems.append(
            f"GPU SM: engines built for SM {built_sm!r}, this host has SM {host_sm!r} "
            "(compile.hardware_compatible=true makes engines portable across Ampere and newer); " + REBUILD
        )
    return problems
