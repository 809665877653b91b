"""Latency and GPU-memory measurement, as in the seeds: host wall-clock around a synchronized call."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Latency:
    """Host wall-clock per call (synchronized), in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    iterations: int


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_latency(call: Callable[[], object], warmup: int = 20, iterations: int = 100) -> Latency:
    """Time ``call`` after ``warmup`` untimed calls; each timed call ends with a synchronize."""
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        _sync()
        samples = []
        for _ in range(iterations):
            start = time.perf_counter()
            call()
            _sync()
            samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return Latency(
        median_ms=statistics.median(samples),
        p90_ms=samples[min(len(samples) - 1, int(0.9 * len(samples)))],
        min_ms=samples[0],
        iterations=iterations,
    )


def gpu_memory_in_use() -> int:
    """Bytes in use on the current GPU by every allocator (the second seed's measure), after
    freeing what PyTorch's caching allocator holds but does not use."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return int(total - free)
