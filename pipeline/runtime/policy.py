"""Runtime policies: what they are, the named presets, and what applying one reported.

A policy is four fields applied to every TensorRT engine of a loaded model. The presets are
defined here, in Python, so that a deployment host switches policies by name
(``load_bundle(path, runtime="cudagraphs")``) without Hydra; ``conf/runtime/*.yaml`` declares the
same presets for the build side, and a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipeline.errors import ConfigError


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
    """

    name: str = "standard"
    pre_allocated_outputs: bool = False
    dynamic_allocation: bool = False
    cuda_graphs: bool = False
    check_value_ranges: bool = True

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
            "policy": asdict(self.policy),
            "applied": self.applied,
            "reason": self.reason,
            "engines_configured": self.engines_configured,
        }
