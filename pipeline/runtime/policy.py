"""Runtime policies: what they are, the named presets, and what applying one reported.

A policy is a few fields applied to every TensorRT engine of a loaded model; three of them are
TensorRT-RTX's own runtime settings (kernel specialization, its CUDA-graph strategy, the runtime
cache), which standard TensorRT engines refuse. The presets are
defined here, in Python, so that a deployment host switches policies by name
(``load_bundle(path, runtime="cudagraphs")``) without Hydra; ``conf/runtime/*.yaml`` declares the
same presets for the build side, and a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from pipeline.errors import ConfigError


class KernelSpecialization(str, Enum):
    """When TensorRT-RTX compiles kernels specialized to the input shapes of a dynamic-shape engine
    (its ``DynamicShapesKernelSpecializationStrategy``): in the background after a shape is first
    seen (``lazy``), before the call that first sees it (``eager``), or never (``none``)."""

    lazy = "lazy"
    eager = "eager"
    none = "none"


class RtxCudaGraphs(str, Enum):
    """TensorRT-RTX's own CUDA-graph strategy inside an engine (its ``CudaGraphStrategy``)."""

    disabled = "disabled"
    whole_graph_capture = "whole_graph_capture"


class RuntimeCacheMode(str, Enum):
    """Whether a TensorRT-RTX bundle's runtime cache (its compiled kernels) is used.

    ``auto``: used where the bundle has one for this host, and one is kept for the verify stage to
    ship; ignored for standard TensorRT. ``on``: the same, set explicitly (TensorRT-RTX only).
    ``off``: kernels compile when the engines load, nothing is cached.
    """

    auto = "auto"
    on = "on"
    off = "off"


#: The fields that only TensorRT-RTX engines take (their "not set" value: the backend's default).
RTX_FIELDS = {
    "kernel_specialization": None,
    "rtx_cuda_graphs": None,
    "runtime_cache": RuntimeCacheMode.auto,
}


@dataclass
class RuntimeConfig:
    """Runtime policy applied to every TensorRT engine when a bundle is loaded.

    - ``pre_allocated_outputs``: allocate each call's outputs ahead, at the end of the call before
      (first seed); every call still returns tensors of its own.
    - ``dynamic_allocation``: engines allocate their execution memory per call and free it
      after (second seed); needs ``compile.dynamically_allocate_resources=true``.
    - ``cuda_graphs``: record and replay each engine's launch as a CUDA graph.
    - ``check_value_ranges``: refuse integer inputs outside their declared ``min_value`` ..
      ``max_value`` before any engine runs; on a GPU this reads one flag back to the host per
      call (README: what it costs).
    - ``kernel_specialization`` (TensorRT-RTX): lazy / eager / none; None keeps TensorRT-RTX's
      default.
    - ``rtx_cuda_graphs`` (TensorRT-RTX): TensorRT-RTX's own CUDA-graph strategy inside each
      engine (disabled / whole_graph_capture), beside ``cuda_graphs`` (a torch graph per engine
      launch); None keeps TensorRT-RTX's default.
    - ``runtime_cache`` (TensorRT-RTX): auto / on / off, see :class:`RuntimeCacheMode`.
    """

    name: str = "standard"
    pre_allocated_outputs: bool = False
    dynamic_allocation: bool = False
    cuda_graphs: bool = False
    check_value_ranges: bool = True
    kernel_specialization: KernelSpecialization | None = None
    rtx_cuda_graphs: RtxCudaGraphs | None = None
    runtime_cache: RuntimeCacheMode = RuntimeCacheMode.auto

    def __post_init__(self) -> None:
        # Plain strings (a manifest, a caller) become the enums; a bad value is one clear line.
        for name, kind in (
            ("kernel_specialization", KernelSpecialization),
            ("rtx_cuda_graphs", RtxCudaGraphs),
            ("runtime_cache", RuntimeCacheMode),
        ):
            value = getattr(self, name)
            if value is None or isinstance(value, kind):
                continue
            try:
                setattr(self, name, kind(value))
            except ValueError:
                choices = ", ".join(member.value for member in kind)
                raise ConfigError(f"runtime.{name}={value}: expected one of {choices}") from None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RuntimeConfig:
        """A policy from a manifest's ``runtime.policy`` record; fields a bundle made before they
        existed take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in record.items() if name in known})

    def to_record(self) -> dict[str, Any]:
        """Plain data (enums as their values) for a manifest."""
        return {
            name: value.value if isinstance(value, Enum) else value for name, value in asdict(self).items()
        }

    def rtx_settings(self) -> dict[str, Any]:
        """The TensorRT-RTX-only fields this policy sets explicitly (name -> value).

        ``runtime_cache=off`` is not among them: it asks for nothing, so every engine can honour it
        (Torch-TensorRT's C++ runtime, standard TensorRT)."""
        return {
            name: getattr(self, name).value
            for name, unset in RTX_FIELDS.items()
            if getattr(self, name) is not None
            and getattr(self, name) != unset
            and not (name == "runtime_cache" and self.runtime_cache is RuntimeCacheMode.off)
        }

    def is_default(self) -> bool:
        """True when this policy changes nothing from Torch-TensorRT's defaults."""
        return not (self.pre_allocated_outputs or self.dynamic_allocation or self.cuda_graphs)

    def problems(self) -> list[str]:
        """Why this combination of fields cannot run (empty when it can)."""
        if self.cuda_graphs and self.dynamic_allocation:
            return [
                "runtime.cuda_graphs and runtime.dynamic_allocation cannot be combined: a recorded "
                "CUDA graph replays fixed memory addresses, which per-call allocation frees"
            ]
        if self.cuda_graphs and self.rtx_cuda_graphs is RtxCudaGraphs.whole_graph_capture:
            return [
                "runtime.cuda_graphs and runtime.rtx_cuda_graphs=whole_graph_capture cannot be combined: "
                "a torch CUDA graph cannot record an engine that captures and launches graphs itself"
            ]
        return []


#: The named presets (``runtime=<name>`` on the build side, ``runtime="<name>"`` at load).
PRESETS: dict[str, RuntimeConfig] = {
    # Torch-TensorRT's defaults: outputs allocated per call, engine memory held, no CUDA graphs.
    "standard": RuntimeConfig(name="standard"),
    # First seed: each call's output buffers are allocated ahead, outside the call's critical path.
    "preallocated": RuntimeConfig(name="preallocated", pre_allocated_outputs=True),
    # Each engine's launch is recorded once as a CUDA graph and replayed; outputs pre-allocated too.
    "cudagraphs": RuntimeConfig(name="cudagraphs", pre_allocated_outputs=True, cuda_graphs=True),
    # Second seed: engines allocate execution memory per call and free it afterwards.
    "dynamic": RuntimeConfig(name="dynamic", dynamic_allocation=True),
}


def runtime_preset(name: str) -> RuntimeConfig:
    """A copy of the :class:`RuntimeConfig` of preset ``name``."""
    try:
        return replace(PRESETS[name])
    except KeyError:
        raise ConfigError(f"runtime={name}: no such preset; available: {', '.join(PRESETS)}") from None


def as_policy(runtime: RuntimeConfig | str) -> RuntimeConfig:
    """Accept a policy object or a preset name; refuse a combination that cannot run."""
    policy = runtime if isinstance(runtime, RuntimeConfig) else runtime_preset(runtime)
    if problems := policy.problems():
        raise ConfigError(problems[0])
    return policy


@dataclass
class PolicyReport:
    """What applying a runtime policy did: applied or not (and why), on how many engines."""

    policy: RuntimeConfig
    applied: bool
    engines_configured: int = 0
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def manifest_record(self) -> dict[str, Any]:
        """The ``runtime`` section of a bundle manifest: what loaders put back on."""
        return {
            "policy": self.policy.to_record(),
            "applied": self.applied,
            "reason": self.reason,
            "engines_configured": self.engines_configured,
            "runner": self.details.get("runner", ""),
        }
