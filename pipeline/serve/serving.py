"""What every server of a bundle does, whichever server it is (Triton's Python backend, Ray Serve).

A :class:`ServedBundle` loads a bundle once, runs its golden check before it answers anything,
checks each request on its own (a bad request fails alone, with the loaded model's one-line
message) and runs the good ones of a batch together where the model batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import BundleError, InputValidationError, one_line
from pipeline.runtime import LoadedBundle, load_bundle, verify_loaded
from pipeline.runtime.loaded import InputChecker
from pipeline.runtime.types import torch_dtype

#: Why a bundle with bfloat16 inputs or outputs is refused by the servers (one line).
BF16_NOT_SERVED = (
    "bfloat16 tensors cannot be served yet: requests and answers travel as numpy arrays (Triton's "
    "Python backend, Ray Serve), and numpy has no bfloat16; serve an fp16 or fp32 bundle"
)


def output_name(entry: Mapping[str, object], index: int) -> str:
    """An output's name in Triton and v2 JSON: its recorded name, else ``output_<index>``."""
    name = entry.get("name")
    return name if isinstance(name, str) and name else f"output_{index}"


#: One request's inputs (or outputs) by name.
Tensors = Mapping[str, np.ndarray]
#: A request that passed the input checks: its position and its inputs in declared order, on
#: the host (a batch's requests are stacked there and moved to the device in one copy per input).
Checked = tuple[int, tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Outcome:
    """The answer to one request: its outputs, or why it failed (``invalid``: the caller's
    inputs were wrong, HTTP 400; otherwise the server failed, HTTP 500)."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    invalid: bool = False


#: What a request's time in the model's server goes to: host checks and the copy in; the model;
#: the copy out to host arrays. Where the model runs on a GPU, ``model_gpu`` is its device time
#: (CUDA events), so a slow ``model`` shows whether the GPU or the host side was slow. A server
#: adds its own phases (Triton's backend: ``answer``, building the responses, and ``execute``, the
#: whole call, so that what Triton counts beyond it is the stub's round trip).
PHASES = ("inputs", "model", "outputs")


#: Set (to anything but 0) to time where each request's time goes in the server's model
#: (``ServedBundle.profile``; the Triton backend logs it when the model unloads).
PROFILE_VARIABLE = "PIPELINE_SERVE_PROFILE"


@dataclass
class Profile:
    """Seconds spent per phase over ``requests`` requests (a GPU sync after each model call, so
    that the model's time is its own; only while profiling)."""

    requests: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, phase: str, seconds: float) -> None:
        """Count ``seconds`` to ``phase`` (a phase not in :data:`PHASES` is added on first use)."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def summary(self) -> str:
        """Mean milliseconds per request of each phase, on one line."""
        each = max(self.requests, 1)
        phases = ", ".join(f"{name} {1e3 * total / each:.3f} ms" for name, total in self.seconds.items())
        return f"serving profile over {self.requests} requests (mean per request): {phases}"


class ServedBundle:
    """A loaded, golden-checked bundle that answers batches of requests."""

    def __init__(self, loaded: LoadedBundle, batching: bool = False) -> None:
        self.loaded = loaded
        self.manifest = loaded.manifest
        #: Whether requests may be stacked along dimension 0 (every input's and output's batch).
        self.batching = batching
        self.output_names = [output_name(entry, i) for i, entry in enumerate(self.manifest.outputs)]
        self.input_names = [spec.name for spec in loaded.specs]
        # Requests arrive as host arrays: checked on the host, then moved to the model's device.
        self._check = InputChecker(loaded.specs, loaded.precision, torch.device("cpu"))
        self.profile: Profile | None = Profile() if os.environ.get(PROFILE_VARIABLE, "0") != "0" else None

    @classmethod
    def load(
        cls, bundle: str | Path, device: str | None = None, batching: bool = False, runtime: str | None = None
    ) -> ServedBundle:
        """Load ``bundle`` on ``device`` with its recorded runtime policy (or the ``runtime``
        preset) and run its golden check; raises :class:`BundleError` (the model must not report
        ready) if it fails."""
        loaded = load_bundle(bundle, runtime=runtime, device=device)
        dtypes = [str(entry.get("dtype", "")) for entry in loaded.manifest.outputs]
        dtypes += [str(torch_dtype(spec.dtype, loaded.precision)) for spec in loaded.specs]
        if any("bfloat16" in dtype for dtype in dtypes):
            loaded.close()
            raise BundleError(BF16_NOT_SERVED)
        try:
            report = verify_loaded(loaded)
        except BaseException:
            loaded.close()
            raise
        if not report.passed:
            loaded.close()
            raise BundleError(f"golden check failed on {loaded.device}: {report.summary()}")
        return cls(loaded, batching)

    def run(
        self, requests: Sequence[Tensors], outputs: Sequence[Collection[str]] | None = None
    ) -> list[Outcome]:
        """Answer each request; requests that pass the input checks and share their non-batch
        shapes run as one call when the model batches. ``outputs``: per request, the outputs it
        asks for (empty or None: all); only those are copied to the host and checked."""
        asked = [
            [
                name
                for name in self.output_names
                if not outputs or not outputs[index] or name in outputs[index]
            ]
            for index in range(len(requests))
        ]
        outcomes: list[Outcome | None] = [None] * len(requests)
        valid: list[Checked] = []
        started = time.perf_counter()
        for index, request in enumerate(requests):
            try:
                valid.append((index, self._checked(request)))
            except InputValidationError as exc:
                outcomes[index] = Outcome(error=one_line(exc), invalid=True)
        if self.profile is not None:
            self.profile.requests += len(requests)
            self.profile.add("inputs", time.perf_counter() - started)
        for group in self._groups(valid):
            wanted = [name for name in self.output_names if any(name in asked[index] for index, _ in group)]
            try:
                arrays = self._call(group, wanted)
                answers = [
                    _finite_outcome({name: values[name] for name in asked[index]})
                    for (index, _), values in zip(group, arrays, strict=True)
                ]
            except Exception as exc:  # one line for the client; never a traceback
                answers = [Outcome(error=f"{type(exc).__name__}: {one_line(exc)}")] * len(group)
            for (index, _), answer in zip(group, answers, strict=True):
                outcomes[index] = answer
        return [outcome if outcome is not None else Outcome(error="not answered") for outcome in outcomes]

    def close(self) -> None:
        """Free the model."""
        self.loaded.close()

    def _checked(self, request: Tensors) -> tuple[torch.Tensor, ...]:
        for name, value in request.items():
            # A NaN or Inf in a request was never verified and would come back as bare NaN tokens,
            # which are not JSON: refused here, one line, as the caller's error.
            if not all_finite(np.asarray(value)):
                raise InputValidationError(f"input '{name}': holds NaN or Inf; send finite values")
        tensors = {name: torch.from_numpy(np.array(value)) for name, value in request.items()}
        checked = self._check(self._check.bind((), tensors))  # declared dtype and shape range
        if self.loaded.policy.check_value_ranges:
            self._check.check_values(checked)  # here, on the host: a bad request fails alone
        return tuple(checked)

    def _groups(self, valid: list[Checked]) -> list[list[Checked]]:
        """Calls to make: one per request, or (batching) requests of equal non-batch shapes
        stacked up to the maximum batch."""
        if not self.batching:
            return [[item] for item in valid]
        limit = self._batch_limit()
        groups: dict[tuple[tuple[int, ...], ...], list[list[Checked]]] = {}
        for item in valid:
            key = tuple(tuple(t.shape[1:]) for t in item[1])
            batches = groups.setdefault(key, [[]])
            if sum(t[1][0].shape[0] for t in batches[-1]) + item[1][0].shape[0] > limit:
                batches.append([])
            batches[-1].append(item)
        return [batch for batches in groups.values() for batch in batches]

    def _batch_limit(self) -> int:
        spec = self.loaded.specs[0]
        return (spec.max_shape or spec.shape)[0]

    def _call(self, group: list[Checked], wanted: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """The ``wanted`` outputs of each request of ``group``, run as one call."""
        # Inputs were checked on the host (values too): the model does not read them back again.
        if len(group) == 1:
            return [self._to_numpy(self._model(group[0][1]), wanted)]
        stacked = [torch.cat(column) for column in zip(*(inputs for _, inputs in group), strict=True)]
        answers = self._to_numpy(self._model(stacked), wanted)  # one copy per output
        bounds = np.cumsum([inputs[0].shape[0] for _, inputs in group])[:-1]
        pieces = {name: np.split(value, bounds) for name, value in answers.items()}
        return [{name: split[position] for name, split in pieces.items()} for position in range(len(group))]

    def _model(self, host_inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        started = time.perf_counter()
        inputs = [tensor.to(self.loaded.device) for tensor in host_inputs]
        if self.profile is None:
            return self.loaded.call_checked_on_host(inputs)
        self.profile.add("inputs", time.perf_counter() - started)  # the copy in
        if self.loaded.device.type != "cuda":
            started = time.perf_counter()
            outputs = self.loaded.call_checked_on_host(inputs)
            self.profile.add("model", time.perf_counter() - started)
            return outputs
        with torch.cuda.device(self.loaded.device):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            started = time.perf_counter()
            begin.record()
            outputs = self.loaded.call_checked_on_host(inputs)
            end.record()
            end.synchronize()
            self.profile.add("model", time.perf_counter() - started)
            self.profile.add("model_gpu", begin.elapsed_time(end) / 1e3)
        return outputs

    def _to_numpy(self, outputs: Sequence[torch.Tensor], wanted: Sequence[str]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        arrays = {
            name: tensor.detach().cpu().contiguous().numpy()
            for name, tensor in zip(self.output_names, outputs, strict=True)
            if name in wanted
        }
        if self.profile is not None:
            self.profile.add("outputs", time.perf_counter() - started)
        return arrays


def _finite_outcome(outputs: dict[str, np.ndarray]) -> Outcome:
    """The answer, or one line where an output holds NaN or Inf (from finite inputs: the model's
    numerics, a server-side failure): JSON has no NaN, and no answer goes out that is not JSON."""
    for name, value in outputs.items():
        if not all_finite(value):
            return Outcome(error=f"output '{name}' holds NaN or Inf for these inputs; refused")
    return Outcome(outputs=outputs)


def all_finite(array: np.ndarray) -> bool:
    """True when ``array`` holds no NaN or Inf (always, for integers and booleans)."""
    if array.dtype == np.float16:
        # numpy computes float16 isfinite in software, about 15x slower than this test of the
        # exponent bits (all ones: Inf or NaN); a BERT batch's hidden states took 2.5 ms.
        return not ((array.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all())
