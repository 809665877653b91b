"""Can an artifact built on one host load on this one? Decided from fingerprints alone.

TensorRT engines are tied to the TensorRT build and version, the Torch-TensorRT runtime ABI and,
unless built ``hardware_compatible``, the GPU's SM; export archives need a torch at least as new
as the one that wrote them. The check runs before any engine is deserialized.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.runtime.types import BackendKind

# (fingerprint key, what it is); all must match exactly for TensorRT engines.
TENSORRT_KEYS = (
    ("tensorrt_build", "TensorRT build"),
    ("tensorrt", "TensorRT version"),
    ("torch_tensorrt", "torch_tensorrt version"),
    ("platform", "platform"),
)
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
        built_torch, host_torch = built.get("torch", ""), host.get("torch", "")
        if version_tuple(built_torch) > version_tuple(host_torch):
            problems.append(
                f"exported with torch {built_torch}, this host has torch {host_torch}: an older torch "
                "cannot read it; upgrade torch or " + REBUILD
            )
        return problems
    for key, label in TENSORRT_KEYS:
        if built.get(key) != host.get(key):
            problems.append(
                f"{label}: bundle built with {built.get(key)!r}, this host has {host.get(key)!r}; "
                "TensorRT engines do not load across these; " + REBUILD
            )
    built_sm, host_sm = built.get("sm"), host.get("sm")
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
