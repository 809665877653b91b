"""bench: what a runtime policy buys, measured side by side on the loaded artifact.

The loaded model (with its policy, plus any ``bench.policies``) is timed against its peers (eager
PyTorch and ``torch.compile`` in the modes ``bench.baselines`` names) and the freshly compiled
module, on the same inputs in the same process, in interleaved rounds. On CUDA the
second seed's memory measure is taken around each loaded variant alone, before the next one (or
any baseline) is loaded: in use before loading, after loading, after the first call and idle after
the warm-up calls (after freeing PyTorch's cache), so each figure counts that variant's engines only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.backends.base import Backend
from pipeline.config.schema import Baseline, BenchConfig, RuntimeConfig
from pipeline.runtime.loaded import LoadedModel
from pipeline.runtime.policy import runtime_preset
from pipeline.timing import (
    Latency,
    compare_latency,
    device_memory_used,
    gpu_memory_in_use,
    process_memory_used,
)

LOADED = "loaded"


def _over(value: int | None, baseline: int | None) -> int | None:
    return None if value is None or baseline is None else value - baseline


def _peak_over(samples: tuple[int | None, ...], baseline: int | None) -> int | None:
    taken = [sample for sample in samples if sample is not None]
    return _over(max(taken), baseline) if taken else None


@dataclass
class LoadMeasurement:
    """Cost of bringing a model up: time and (on CUDA) GPU memory around it, in two views.

    Allocator view (``memory_*``, ``peak_allocated``): device memory in use with PyTorch's
    unused cache handed back first, and torch's peak allocated. Device view (``device_*``): in
    use with that cache kept, what ``nvidia-smi`` shows a deployment host, sampled after the
    first call and idle after the warm-up calls; ``process_*`` is NVML's figure for this process
    alone, where NVML gives one. Both views are taken over ``memory_before_load``, measured
    after the CUDA context exists. None: not measured (CPU, or benched before it was recorded).
    """

    load_seconds: float
    first_call_seconds: float
    memory_before_load: int | None = None
    memory_after_load: int | None = None
    memory_after_first_call: int | None = None
    #: Idle after the warm-up calls, before anything else was loaded.
    memory_idle_after_calls: int | None = None
    #: torch's peak allocated from before the load to the end of the warm-up calls.
    peak_allocated: int | None = None
    device_after_first_call: int | None = None
    device_idle_after_calls: int | None = None
    process_before_load: int | None = None
    process_after_first_call: int | None = None
    process_idle_after_calls: int | None = None

    @property
    def idle_engine_memory(self) -> int | None:
        """Memory the loaded model holds while idle between calls (allocator view)."""
        return _over(self.memory_idle_after_calls, self.memory_before_load)

    @property
    def device_idle_memory(self) -> int | None:
        """What ``nvidia-smi`` shows the model adding while idle, PyTorch's cache included."""
        return _over(self.device_idle_after_calls, self.memory_before_load)

    @property
    def device_peak_memory(self) -> int | None:
        """The larger of the device view's two samples (after the first call, after the warm-up)."""
        return _peak_over(
            (self.device_after_first_call, self.device_idle_after_calls), self.memory_before_load
        )

    @property
    def process_idle_memory(self) -> int | None:
        """NVML's figure for this process while idle, over its figure before the load."""
        return _over(self.process_idle_after_calls, self.process_before_load)

    @property
    def process_peak_memory(self) -> int | None:
        """The larger of NVML's two samples for this process, over its figure before the load."""
        return _peak_over(
            (self.process_after_first_call, self.process_idle_after_calls), self.process_before_load
        )

    def record(self) -> dict[str, Any]:
        """JSON-ready form: the samples and the figures over the baseline that readers use."""
        return {
            **asdict(self),
            "idle_engine_memory": self.idle_engine_memory,
            "device_idle_memory": self.device_idle_memory,
            "device_peak_memory": self.device_peak_memory,
            "process_idle_memory": self.process_idle_memory,
            "process_peak_memory": self.process_peak_memory,
        }


@dataclass
class BenchReport:
    """Latency per variant (``loaded``, ``loaded:<policy>``, baselines) and the load costs."""

    policy: str
    latency: dict[str, Latency]
    load: LoadMeasurement
    extra_seconds: dict[str, float] = field(default_factory=dict)
    #: The loaded model at the other golden shapes (min, max, odd), and ``switching``: calls
    #: that alternate between the opt shape and another one, what a change of shape costs.
    shapes: dict[str, Latency] = field(default_factory=dict)
    #: Policies that could not be applied to this artifact (no engines to put them on: the export
    #: backend), with the reason. Extra policies among them are not timed: their timing would be
    #: the standard one under another name.
    not_applied: dict[str, str] = field(default_factory=dict)
    #: The load costs of each extra policy's own load (``loaded:<policy>``), measured alike.
    variant_loads: dict[str, LoadMeasurement] = field(default_factory=dict)

    def ratio(self, variant: str, baseline: str) -> float | None:
        """``variant``'s median host latency over ``baseline``'s (None if either is missing)."""
        if variant not in self.latency or baseline not in self.latency:
            return None
        return self.latency[variant].median_ms / self.latency[baseline].median_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as recorded in the manifest."""
        return {
            "policy": self.policy,
            "latency": {name: asdict(value) for name, value in self.latency.items()},
            "load": self.load.record(),
            "extra_seconds": self.extra_seconds,
            "shapes": {name: asdict(value) for name, value in self.shapes.items()},
            "policies_not_applied": self.not_applied,
            "variant_loads": {name: load.record() for name, load in self.variant_loads.items()},
        }


def measure_load(
    load: Callable[[], LoadedModel], inputs: tuple[torch.Tensor, ...]
) -> tuple[LoadedModel, LoadMeasurement]:
    """Load a model and make its first call, recording time and device memory around both."""
    cuda = torch.cuda.is_available()
    before = gpu_memory_in_use() if cuda else None
    process_before = process_memory_used() if cuda else None
    start = time.perf_counter()
    loaded = load()
    load_seconds = time.perf_counter() - start
    after_load = gpu_memory_in_use() if cuda else None
    start = time.perf_counter()
    loaded(*inputs)
    if cuda:
        torch.cuda.synchronize()
    first_call = time.perf_counter() - start
    measurement = LoadMeasurement(
        load_seconds=load_seconds,
        first_call_seconds=first_call,
        memory_before_load=before,
        memory_after_load=after_load,
        process_before_load=process_before,
    )
    if cuda:
        # The device view first: gpu_memory_in_use hands back the cache that view must count.
        measurement.device_after_first_call = device_memory_used()
        measurement.process_after_first_call = process_memory_used()
        measurement.memory_after_first_call = gpu_memory_in_use()
    return loaded, measurement


def finish_load_measurement(measurement: LoadMeasurement, peak_from: int | None) -> None:
    """Record idle memory now (device view, then allocator view) and torch's peak allocated
    since ``peak_from``."""
    if torch.cuda.is_available():
        measurement.device_idle_after_calls = device_memory_used()
        measurement.process_idle_after_calls = process_memory_used()
        measurement.memory_idle_after_calls = gpu_memory_in_use()
        measurement.peak_allocated = torch.cuda.max_memory_allocated() - (peak_from or 0)


def measure_alone(
    load: Callable[[], LoadedModel], inputs: tuple[torch.Tensor, ...], warmup: int
) -> tuple[LoadedModel, LoadMeasurement]:
    """Load a model, make its first call and ``warmup`` more, and measure what it holds idle.

    Called before anything else is loaded (the next variant, ``torch.compile``), so the figures
    count this model's engines, buffers and captured graphs and nothing else.
    """
    peak_from = None
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        peak_from = torch.cuda.memory_allocated()
    loaded, measurement = measure_load(load, inputs)
    for _ in range(warmup):
        loaded(*inputs)
    finish_load_measurement(measurement, peak_from)
    return loaded, measurement


def bench_model(
    load: Callable[[RuntimeConfig], LoadedModel],
    policy: RuntimeConfig,
    inputs: tuple[torch.Tensor, ...],
    settings: BenchConfig,
    eager: nn.Module | None = None,
    fresh: FreshModel | None = None,
    shape_inputs: dict[str, tuple[torch.Tensor, ...]] | None = None,
) -> BenchReport:
    """Time the loaded model (and extra policies) against the requested baselines.

    With a fresh module, ``fresh`` is Torch-TensorRT's default (standard) state and
    ``fresh:<policy>`` the same engines under each timed policy, for like-for-like ratios.
    ``inputs`` are at the opt shape; ``shape_inputs`` (other shapes of a model with dynamic
    dimensions) are timed on the loaded model afterwards, alone and alternating with ``inputs``.
    Memory is measured around each loaded variant alone (:func:`measure_alone`).
    """
    loaded, load_measurement = measure_alone(lambda: load(policy), inputs, settings.warmup)
    calls: dict[str, Callable[[], object]] = {LOADED: lambda: loaded(*inputs)}
    not_applied: dict[str, str] = {}
    policies = [policy]
    if not loaded.policy_report.applied and not policy.is_default():
        not_applied[policy.name] = loaded.policy_report.reason
    variant_loads: dict[str, LoadMeasurement] = {}
    for name in settings.policies:
        if name != policy.name:
            preset = runtime_preset(name)
            variant, variant_load = measure_alone(lambda preset=preset: load(preset), inputs, settings.warmup)  # type: ignore[misc]
            if not variant.policy_report.applied and not variant.policy.is_default():
                not_applied[name] = variant.policy_report.reason
                del variant  # not timed: free its engines
                continue
            variant_loads[name] = variant_load
            policies.append(variant.policy)
            calls[f"{LOADED}:{name}"] = lambda variant=variant: variant(*inputs)  # type: ignore[misc]
    extra_seconds: dict[str, float] = {}
    if eager is not None and Baseline.eager in settings.baselines:
        calls[Baseline.eager.value] = lambda: eager(*inputs)
    if eager is not None:
        compiled_calls, extra_seconds = compile_peers(eager, inputs, settings.baselines)
        calls.update(compiled_calls)
    prepare: dict[str, Callable[[], object]] = {}
    if fresh is not None and Baseline.fresh in settings.baselines:
        variants = {Baseline.fresh.value: RuntimeConfig()}
        variants.update(
            {f"fresh:{p.name}": p for p in policies if not p.is_default() and p.name not in not_applied}
        )
        for name, fresh_policy in variants.items():
            calls[name], prepare[name] = fresh.variant(fresh_policy, inputs)
    latency = compare_latency(
        calls,
        settings.warmup,
        settings.iterations,
        settings.rounds,
        prepare,
        warmup_s=gpu_warmup_s(inputs, settings),
    )
    shapes = time_shapes(loaded, inputs, shape_inputs or {}, settings)
    return BenchReport(
        policy=policy.name,
        latency=latency,
        load=load_measurement,
        extra_seconds=extra_seconds,
        shapes=shapes,
        not_applied=not_applied,
        variant_loads=variant_loads,
    )


#: ``torch.compile``'s ``mode`` for each baseline that compiles the eager model with inductor.
TORCH_COMPILE_MODES: dict[Baseline, str | None] = {
    Baseline.inductor: None,  # no mode argument: what the bench has always timed as "inductor"
    Baseline.inductor_reduce_overhead: "reduce-overhead",
    Baseline.inductor_max_autotune: "max-autotune-no-cudagraphs",
}

#: The bundle's peers (what a user could serve instead), in words a reader knows them by.
PEERS: dict[str, str] = {
    Baseline.eager.value: "eager PyTorch",
    Baseline.inductor.value: "torch.compile default mode",
    Baseline.inductor_reduce_overhead.value: "torch.compile reduce-overhead",
    Baseline.inductor_max_autotune.value: "torch.compile max-autotune-no-cudagraphs",
}


def compile_peers(
    eager: nn.Module, inputs: tuple[torch.Tensor, ...], baselines: list[Baseline]
) -> tuple[dict[str, Callable[[], object]], dict[str, float]]:
    """A call per requested ``torch.compile`` mode and each mode's compile time (its first call),
    under ``<baseline>_compile``. reduce-overhead records its CUDA graphs on later calls: in the
    untimed warm-up, not in that figure."""
    calls: dict[str, Callable[[], object]] = {}
    seconds: dict[str, float] = {}
    for baseline, mode in TORCH_COMPILE_MODES.items():
        if baseline not in baselines:
            continue
        compiled = torch.compile(eager) if mode is None else torch.compile(eager, mode=mode)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(*inputs)
        if any(t.is_cuda for t in inputs):
            torch.cuda.synchronize()  # the first call's kernels belong to the compile time
        seconds[f"{baseline.value}_compile"] = time.perf_counter() - start
        calls[baseline.value] = lambda compiled=compiled: compiled(*inputs)  # type: ignore[misc]
    return calls, seconds


def peer_ratios(medians: Mapping[str, float], variant: str = LOADED) -> dict[str, float]:
    """``variant``'s median latency over each timed peer's (below 1: the bundle is faster)."""
    if variant not in medians:
        return {}
    return {peer: medians[variant] / medians[peer] for peer in PEERS if peer in medians}


def not_faster_note(ratios: Mapping[str, float]) -> str:
    """Words for a bundle that is not faster than its fastest peer, naming every peer it does
    not beat (fastest first); '' when it beats every peer timed."""
    beaten_by = sorted((peer for peer, ratio in ratios.items() if ratio >= 1.0), key=lambda p: -ratios[p])
    if not beaten_by:
        return ""
    first, *others = beaten_by
    note = f"the bundle is not faster than {PEERS[first]} here ({ratios[first]:.2f}x)"
    return note + "".join(f", nor than {PEERS[peer]} ({ratios[peer]:.2f}x)" for peer in others)


def peer_summary(ratios: Mapping[str, float]) -> str:
    """Each peer's ratio in one line, e.g. ``0.20x eager PyTorch, 0.95x torch.compile ...``."""
    return ", ".join(f"{ratio:.2f}x {PEERS[peer]}" for peer, ratio in ratios.items())


SWITCHING = "switching"


def gpu_warmup_s(inputs: tuple[torch.Tensor, ...], settings: BenchConfig) -> float:
    """The warm-up floor in seconds: ``settings.warmup_s`` where the model runs on a GPU, else 0."""
    return settings.warmup_s if any(t.is_cuda for t in inputs) else 0.0


def time_shapes(
    loaded: LoadedModel,
    inputs: tuple[torch.Tensor, ...],
    shape_inputs: dict[str, tuple[torch.Tensor, ...]],
    settings: BenchConfig,
) -> dict[str, Latency]:
    """Latency at each other shape, and per call when every call changes the shape.

    ``switching`` alternates the opt shape with the odd one (else the first other shape): with
    pre-allocated outputs, each change of shape allocates new output buffers.
    """
    if not shape_inputs:
        return {}
    calls: dict[str, Callable[[], object]] = {
        name: lambda other=other: loaded(*other)  # type: ignore[misc]
        for name, other in shape_inputs.items()
    }
    other = shape_inputs.get("odd") or next(iter(shape_inputs.values()))
    turn = itertools.cycle((inputs, other))
    calls[SWITCHING] = lambda: loaded(*next(turn))
    return compare_latency(
        calls,
        settings.warmup,
        settings.iterations,
        settings.rounds,
        {},
        warmup_s=gpu_warmup_s(inputs, settings),
    )


@dataclass
class FreshModel:
    """The freshly compiled module and the backend that can set policies on its engines."""

    module: nn.Module
    backend: Backend

    def variant(
        self, policy: RuntimeConfig, inputs: tuple[torch.Tensor, ...]
    ) -> tuple[Callable[[], object], Callable[[], object]]:
        """A call under ``policy`` and the preparation that puts the policy on the engines."""
        executor = self.backend.executor(self.module)
        context = [executor.call_context()]

        def prepare() -> object:
            report = executor.configure(policy)
            context[0] = executor.call_context()  # the one of the policy just configured
            return report

        def call() -> object:
            with context[0]:
                return self.module(*inputs)

        return call, prepare


def report_rows(report: BenchReport) -> list[tuple[str, str]]:
    """Label/value rows for the terminal."""
    rows = []
    for name, value in report.latency.items():
        device = f", device {value.device_median_ms:.3f}" if value.device_median_ms is not None else ""
        ratio = report.ratio(name, Baseline.fresh.value)
        versus = f" ({ratio:.2f}x fresh)" if ratio is not None and name != Baseline.fresh.value else ""
        rows.append(
            (
                f"latency {name}",
                f"median {value.median_ms:.3f} ms, p90 {value.p90_ms:.3f}, "
                f"min {value.min_ms:.3f}{device}{versus}",
            )
        )
    medians = {name: value.median_ms for name, value in report.latency.items()}
    for name in (name for name in report.latency if name.startswith(LOADED)):
        ratios = peer_ratios(medians, name)
        if ratios:
            rows.append((f"{name} vs peers", peer_summary(ratios)))
        note = not_faster_note(ratios)
        if note:
            rows.append((f"{name} note", note))
    for name, reason in report.not_applied.items():
        timed = "timed as the loaded bundle" if name == report.policy else "not timed"
        rows.append((f"policy {name}", f"not applied ({reason}): {timed}"))
    load = report.load
    rows.append(("load / first call", f"{load.load_seconds:.2f} s / {load.first_call_seconds * 1e3:.1f} ms"))
    if load.idle_engine_memory is not None:
        rows.extend(memory_rows(load))
    for name, seconds in report.extra_seconds.items():
        rows.append((name, f"{seconds:.1f} s"))
    for name, value in report.shapes.items():
        label = "every call a new shape" if name == SWITCHING else f"{name} shape"
        rows.append((f"latency loaded, {label}", f"median {value.median_ms:.3f} ms, p90 {value.p90_ms:.3f}"))
    return rows


def mib(value: int | None) -> str:
    """Bytes as whole MiB, or ``-`` where not measured."""
    return "-" if value is None else f"{value / 2**20:.0f}"


def memory_rows(load: LoadMeasurement) -> list[tuple[str, str]]:
    """The loaded model's idle and peak memory in the allocator view and the device views."""
    return [
        (
            "memory idle / peak, allocator",
            f"{mib(load.idle_engine_memory)} / {mib(load.peak_allocated)} MiB "
            "(torch cache freed / torch peak allocated)",
        ),
        (
            "memory idle / peak, device (nvidia-smi)",
            f"{mib(load.device_idle_memory)} / {mib(load.device_peak_memory)} MiB "
            "(torch cache kept, over the CUDA context)",
        ),
        (
            "memory idle / peak, this process (NVML)",
            f"{mib(load.process_idle_memory)} / {mib(load.process_peak_memory)} MiB",
        ),
    ]


def bench_bundle(path: str | Path, runtime: str | None, settings: BenchConfig) -> BenchReport:
    """Time a packed or published bundle on this host: load, first call, latency (and extra
    policies), memory."""
    from pipeline.models import make_inputs
    from pipeline.runtime.loader import default_device, input_specs, load_bundle, open_bundle, recorded_policy
    from pipeline.runtime.policy import as_policy
    from pipeline.runtime.types import Precision

    opened = open_bundle(path)
    root, manifest = opened.root, opened.manifest
    policy = as_policy(runtime) if runtime else recorded_policy(manifest)
    specs = input_specs(manifest)
    inputs = make_inputs(specs, 0, Precision(manifest.precision), default_device(manifest))
    return bench_model(lambda p: load_bundle(root, runtime=p), policy, inputs, settings)
