"""Latency and GPU-memory measurement, as in the seeds.

Latency: host wall-clock around each call ending in ``torch.cuda.synchronize()`` (the first
seed's measure) and, on CUDA, the device time between CUDA events around the same call.
Variants are measured in interleaved rounds so that clock and thermal drift hit all alike.
Memory: device-wide bytes in use from ``torch.cuda.mem_get_info`` (the second seed's measure),
with PyTorch's unused cache handed back first (:func:`gpu_memory_in_use`) or kept, as a
deployment host's ``nvidia-smi`` sees it (:func:`device_memory_used`); and this process's own
figure from NVML where it can be had (:func:`process_memory_used`).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class Latency:
    """Per-call latency statistics, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    device_median_ms: float | None
    iterations: int
    p10_ms: float | None = None  # None in bundles benchmarked before it was recorded


@dataclass
class Stopwatch:
    """Wall-clock seconds of named steps, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def lap(self, name: str) -> Iterator[None]:
        """Time the body as step ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _stats(host: list[float], device: list[float]) -> Latency:
    host = sorted(host)
    return Latency(
        median_ms=statistics.median(host),
        p90_ms=host[min(len(host) - 1, int(0.9 * len(host)))],
        p10_ms=host[int(0.1 * len(host))],
        min_ms=host[0],
        device_median_ms=statistics.median(device) if device else None,
        iterations=len(host),
    )


def _timed_calls(call: Callable[[], object], count: int, host: list[float], device: list[float]) -> None:
    cuda = torch.cuda.is_available()
    for _ in range(count):
        if cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        start = time.perf_counter()
        call()
        if cuda:
            end_event.record()
        _sync()
        host.append((time.perf_counter() - start) * 1e3)
        if cuda:
            device.append(start_event.elapsed_time(end_event))


def compare_latency(
    calls: Mapping[str, Callable[[], object]],
    warmup: int = 50,
    iterations: int = 200,
    rounds: int = 5,
    prepare: Mapping[str, Callable[[], object]] | None = None,
    settle: int = 3,
    warmup_s: float = 0.0,
) -> dict[str, Latency]:
    """Latency of each call, measured side by side: warm-up each (``warmup`` calls, and until it
    has run ``warmup_s`` seconds), then ``iterations`` timed calls per variant spread over
    ``rounds`` interleaved rounds.

    Variants that share state (one module timed under several policies) name a ``prepare``
    callable; it runs before the variant's warm-up and before each of its rounds, followed by
    ``settle`` untimed calls (e.g. a CUDA graph re-recorded after a mode switch).
    """
    prepare = prepare or {}
    host: dict[str, list[float]] = {name: [] for name in calls}
    device: dict[str, list[float]] = {name: [] for name in calls}
    rounds = max(1, min(rounds, iterations))
    per_round = [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]
    with torch.inference_mode():
        for name, call in calls.items():
            if name in prepare:
                prepare[name]()
            warm_until = time.perf_counter() + warmup_s
            done = 0
            while done < warmup or time.perf_counter() < warm_until:
                call()
                done += 1
                if done % 50 == 0:
                    _sync()  # the GPU, not the launch queue, must have run the warm-up
        _sync()
        for count in per_round:
            for name, call in calls.items():
                if name in prepare and len(calls) > 1:
                    prepare[name]()
                    for _ in range(settle):
                        call()
                    _sync()
                _timed_calls(call, count, host[name], device[name])
    return {name: _stats(host[name], device[name]) for name in calls}


def measure_latency(call: Callable[[], object], warmup: int = 20, iterations: int = 100) -> Latency:
    """Latency of one call (see :func:`compare_latency` to compare several)."""
    return compare_latency({"call": call}, warmup=warmup, iterations=iterations, rounds=1)["call"]


def gpu_memory_in_use() -> int:
    """Bytes in use on the current GPU by every allocator (the second seed's measure), after
    freeing what PyTorch's caching allocator holds but does not use."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def device_memory_used() -> int:
    """Bytes in use on the current GPU as the driver counts them, what ``nvidia-smi`` shows.

    Unlike :func:`gpu_memory_in_use`, PyTorch's cached but unused blocks count: a serving
    process keeps them, so they are memory the host cannot give to anything else.
    """
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def process_memory_used() -> int | None:
    """This process's memory on the current GPU according to NVML (``nvidia-smi``'s process list).

    None where NVML cannot tell: ``nvidia-ml-py`` not installed, no NVML driver library, a MIG
    slice, a PID namespace (a container) that hides this process's id from the driver, or a
    driver that withholds per-process figures.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml's errors differ between its releases; no NVML means no figure
        return None
    try:
        uuid = torch.cuda.get_device_properties(torch.cuda.current_device()).uuid
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except Exception:  # an optional figure: whatever NVML refuses, the bench goes on without it
        return None
    finally:
        pynvml.nvmlShutdown()
    used = [process.usedGpuMemory for process in processes if process.pid == os.getpid()]
    return int(used[0]) if used and used[0] is not None else None
