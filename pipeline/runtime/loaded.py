"""A loaded model as deployment code sees it: input-checked, pinned to its device, with its
runtime policy applied.

Both the pipeline's ``reload`` stage and :func:`pipeline.runtime.load_bundle` build one, so what is
verified before publishing is exactly what deployment hosts run.

The contract of a loaded model (the README's "Calling a loaded model"):

* **Threads.** Any number of threads may call one model; calls run one at a time (its engines
  keep per-call state), each caller gets the answer to its own inputs, and the tensors it was
  given never change afterwards.
* **Streams and devices.** A call runs on the model's device, on the caller's current stream,
  and starts on the GPU only after the model's previous call (from any thread or stream) has
  finished there; the caller's current device and stream are left as they were. Outputs live on
  the model's device.
* **Autograd.** Calls run with autograd off and outside inference mode, whatever the caller's
  mode, so engine state recorded by one call is never touched by a later call under another mode.
* **Lifetime.** :meth:`LoadedModel.close` (or ``with``) frees the engines; a closed model refuses
  calls.
"""

from __future__ import annotations

import difflib
import gc
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.errors import BundleError, InputValidationError, ModelClosedError
from pipeline.runtime.executor import EngineExecutor, NoEngines
from pipeline.runtime.policy import PolicyReport, RuntimeConfig, as_policy
from pipeline.runtime.types import InputSpec, Precision, dim_names, torch_dtype


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` with an index for CUDA (``cuda`` means the current device), checked to exist."""
    resolved = torch.device(device)
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise BundleError(f"device {resolved}: no CUDA GPU is visible on this host")
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    if not 0 <= index < torch.cuda.device_count():
        raise BundleError(f"device cuda:{index}: this host has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class _ExpectedInput:
    name: str
    dtype: torch.dtype
    low: tuple[int, ...]
    high: tuple[int, ...]
    dims: tuple[str | None, ...]
    min_value: int | None
    max_value: int | None


class InputChecker:
    """Checks call arguments against the declared input specs before any engine runs.

    Raises :class:`InputValidationError` (not ``assert``: it must hold under ``python -O``).
    """

    def __init__(self, specs: Sequence[InputSpec], precision: Precision, device: torch.device):
        self.device = device
        self.expected = [
            _ExpectedInput(
                name=spec.name,
                dtype=torch_dtype(spec.dtype, precision),
                low=tuple(spec.min_shape or spec.shape),
                high=tuple(spec.max_shape or spec.shape),
                dims=tuple(dim_names(spec)),
                min_value=spec.min_value,
                max_value=spec.max_value,
            )
            for spec in specs
        ]
        self._ranged = [
            index
            for index, e in enumerate(self.expected)
            if not e.dtype.is_floating_point and (e.min_value is not None or e.max_value is not None)
        ]
        # Only a name used more than once can disagree; most models have none, so skip the check.
        uses = Counter(name for expected in self.expected for name in expected.dims if name)
        self._has_shared_dims = any(count > 1 for count in uses.values())

    def bind(self, args: Sequence[object], named: Mapping[str, object]) -> tuple[object, ...]:
        """The inputs in declared order, from positional ``args`` and inputs given by name."""
        if not named:
            return tuple(args)
        names = [e.name for e in self.expected]
        for name in named:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise InputValidationError(f"no input named '{name}'; inputs: {', '.join(names)}{hint}")
        bound = list(args)
        for name in names[len(args) :]:
            if name not in named:
                raise InputValidationError(f"input '{name}' not given; inputs: {', '.join(names)}")
            bound.append(named[name])
        if given_twice := [n for n in names[: len(args)] if n in named]:
            raise InputValidationError(f"input '{given_twice[0]}' given both by position and by name")
        return tuple(bound)

    def __call__(self, args: Sequence[object]) -> tuple[torch.Tensor, ...]:
        """The inputs, checked: count, type, dtype, device, shape range, shared dimensions."""
        if len(args) != len(self.expected):
            names = ", ".join(e.name for e in self.expected)
            raise InputValidationError(f"expected {len(self.expected)} inputs ({names}), got {len(args)}")
        shapes = []
        for value, expected in zip(args, self.expected, strict=True):
            if not isinstance(value, torch.Tensor):
                raise InputValidationError(
                    f"input '{expected.name}': expected a tensor, got {type(value).__name__}"
                )
            if value.dtype != expected.dtype:
                raise InputValidationError(
                    f"input '{expected.name}': dtype {value.dtype}, expected {expected.dtype}"
                )
            if value.device.type != self.device.type or (
                self.device.index is not None and value.device.index != self.device.index
            ):
                raise InputValidationError(
                    f"input '{expected.name}': on {value.device}, but the model runs on {self.device} "
                    f"(move it there with .to('{self.device}'))"
                )
            shape = value.shape
            shapes.append(shape)
            if len(shape) != len(expected.low) or any(
                not lo <= d <= hi for lo, d, hi in zip(expected.low, shape, expected.high, strict=True)
            ):
                raise InputValidationError(
                    f"input '{expected.name}': shape {tuple(shape)} outside the declared range "
                    f"{list(expected.low)}..{list(expected.high)}"
                )
        if self._has_shared_dims:
            self._check_shared_dims(shapes)
        return tuple(args)  # type: ignore[arg-type]  # every one a tensor, checked above

    def check_values(self, args: Sequence[torch.Tensor]) -> None:
        """Integer inputs within their declared ``min_value``..``max_value`` (already checked by
        :meth:`__call__` otherwise). On a GPU: one min/max reduction per input and a single
        device-to-host read of all of them."""
        ranged = [index for index in self._ranged if args[index].numel()]  # an empty one holds no value
        if not ranged:
            return
        extrema = [value for index in ranged for value in torch.aminmax(args[index])]
        if len({value.dtype for value in extrema}) > 1:
            extrema = [value.long() for value in extrema]
        values = torch.stack(extrema).tolist()
        for position, index in enumerate(ranged):
            expected = self.expected[index]
            smallest, largest = values[2 * position], values[2 * position + 1]
            low = "" if expected.min_value is None else expected.min_value
            high = "" if expected.max_value is None else expected.max_value
            if expected.min_value is not None and smallest < expected.min_value:
                offending = smallest
            elif expected.max_value is not None and largest > expected.max_value:
                offending = largest
            else:
                continue
            raise InputValidationError(
                f"input '{expected.name}': value {offending} outside the declared range {low}..{high}"
            )

    def _check_shared_dims(self, shapes: Sequence[torch.Size]) -> None:
        """Dimensions with one name (e.g. ``batch``) must have one size across the inputs."""
        seen: dict[str, tuple[str, int]] = {}
        for shape, expected in zip(shapes, self.expected, strict=True):
            for name, size in zip(expected.dims, shape, strict=True):
                if name is None:
                    continue
                first = seen.setdefault(name, (expected.name, size))
                if first[1] != size:
                    raise InputValidationError(
                        f"inputs '{first[0]}' and '{expected.name}' must agree on dimension '{name}': "
                        f"{first[1]} vs {size}"
                    )


class ModelOutputs(tuple[torch.Tensor, ...]):
    """A loaded model's outputs: a tuple of tensors that also answers to the outputs' names.

    A model that returned a dict or a transformers ``ModelOutput`` keeps its keys:
    ``outputs["last_hidden_state"]``, ``outputs.to_dict()``; ``outputs[0]`` works for every model.
    """

    names: tuple[str | None, ...]

    def __new__(cls, values: Sequence[torch.Tensor], names: Sequence[str | None] = ()) -> ModelOutputs:
        outputs = super().__new__(cls, values)
        outputs.names = tuple(names) if len(names) == len(outputs) else (None,) * len(outputs)
        return outputs

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key not in self.names:
                known = [n for n in self.names if n is not None]
                raise KeyError(f"no output named {key!r}; outputs: {known or 'unnamed'}")
            return super().__getitem__(self.names.index(key))
        return super().__getitem__(key)

    def __getattr__(self, name: str) -> torch.Tensor:
        # Attribute access to named outputs, as transformers' ModelOutput allows (``out.logits``).
        names = self.__dict__.get("names", ())
        if name in names:
            return tuple.__getitem__(self, names.index(name))
        raise AttributeError(f"no output named {name!r}; outputs: {[n for n in names if n] or 'unnamed'}")

    def keys(self) -> list[str]:
        """The output names, in order (empty when the model's outputs have none)."""
        return [n for n in self.names if n is not None]

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The outputs by name, as the eager model returned them (named outputs only)."""
        return {n: t for n, t in zip(self.names, self, strict=True) if n is not None}


class LoadedModel:
    """Callable like the model: ``outputs = loaded(*inputs)`` (or inputs by their declared
    names) returns :class:`ModelOutputs`. See the module docstring for the call contract."""

    def __init__(
        self,
        module: nn.Module,
        executor: EngineExecutor,
        specs: Sequence[InputSpec],
        precision: Precision,
        device: str | torch.device,
        policy: RuntimeConfig | str,
        expected_engines: int | None = None,
        output_names: Sequence[str | None] = (),
    ) -> None:
        self.device = resolve_device(device)
        self.module: nn.Module | None = module
        self.output_names = tuple(output_names)
        #: How the module's engines run (the runner, its runtime cache): see :mod:`pipeline.runtime.executor`.
        self.executor = executor
        self.specs = list(specs)
        self.precision = precision
        self.expected_engines = expected_engines
        self._check_inputs = InputChecker(self.specs, precision, self.device)
        self._lock = threading.RLock()
        # Recorded on the caller's stream at the end of every call: the next call, from whichever
        # stream, starts on the GPU only after it (see _run_in_call_order).
        self._last_call_done = torch.cuda.Event() if self.device.type == "cuda" else None
        self._call_context: AbstractContextManager[Any] = nullcontext()
        self.policy_report: PolicyReport = self._apply(as_policy(policy), previous=None)

    @property
    def policy(self) -> RuntimeConfig:
        """The runtime policy in force."""
        return self.policy_report.policy

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self.module is None

    def set_runtime(self, runtime: RuntimeConfig | str) -> PolicyReport:
        """Switch the runtime policy (a :class:`RuntimeConfig` or a preset name) on every engine.

        All or nothing: the policy is checked first, and if any engine refuses it, every engine
        goes back to the policy in force before the error is raised. Waits for a call in progress
        on another thread to finish first.
        """
        policy = as_policy(runtime)
        with self._lock:
            # Engines drop graphs, buffers and memory that calls still queued on the GPU may use.
            self._wait_for_last_call()
            self.policy_report = self._apply(policy, previous=self.policy)
        return self.policy_report

    def _wait_for_last_call(self) -> None:
        if self._last_call_done is not None:
            self._last_call_done.synchronize()

    def _apply(self, policy: RuntimeConfig, previous: RuntimeConfig | None) -> PolicyReport:
        self._open_module()
        report = self.executor.configure(policy, previous)
        if self.expected_engines is not None and report.engines_configured != self.expected_engines:
            if previous is not None:
                self.executor.configure(previous)
            raise BundleError(
                f"configured {report.engines_configured} TensorRT engines but the bundle was "
                f"built with {self.expected_engines}: the artifact does not match its manifest"
            )
        self._call_context = self.executor.call_context()
        return report

    @contextmanager
    def hold_resources(self) -> Iterator[None]:
        """Keep engine memory allocated between calls for a burst of calls (dynamic policy).

        Other threads' calls wait until the block ends."""
        with self._lock:
            self._open_module()
            with self.executor.hold_memory():
                try:
                    yield
                finally:
                    self._wait_for_last_call()  # before the held memory goes back: calls may still use it

    def __call__(self, *inputs: torch.Tensor, **named: torch.Tensor) -> ModelOutputs:
        """Run the model on ``inputs`` (checked first; inputs may also be given by their declared
        names); returns its outputs as a tuple of tensors that answers to output names too."""
        bound = self._check_inputs(self._check_inputs.bind(inputs, named))
        if self.policy.check_value_ranges:
            self._check_inputs.check_values(bound)
        return self._run(bound)

    def call_checked_on_host(self, inputs: Sequence[torch.Tensor]) -> ModelOutputs:
        """Run the model on inputs that already passed this model's checks on the host (a
        server checks each request there, so that a bad one fails alone): only that they are
        on the model's device is checked again, and values are not read back a second time."""
        for position, tensor in enumerate(inputs):
            if tensor.device != self.device:
                raise InputValidationError(
                    f"input {position}: on {tensor.device}, the model runs on {self.device}"
                )
        if len(inputs) != len(self.specs):
            raise InputValidationError(f"expected {len(self.specs)} inputs, got {len(inputs)}")
        return self._run(tuple(inputs))

    def _run(self, bound: Sequence[torch.Tensor]) -> ModelOutputs:
        with self._lock:
            module = self._open_module()
            with self._call_context, torch.inference_mode(False), torch.no_grad():
                if self._last_call_done is None:
                    return ModelOutputs(module(*bound), self.output_names)
                return ModelOutputs(
                    self._run_in_call_order(module, bound, self._last_call_done), self.output_names
                )

    def _run_in_call_order(
        self, module: nn.Module, inputs: Sequence[torch.Tensor], last_call_done: torch.cuda.Event
    ) -> Sequence[torch.Tensor]:
        # Engines keep state between calls that the GPU reads and writes after the host has moved
        # on (a CUDA graph's static input and output buffers, intermediate engines' pre-allocated
        # outputs). Calls are serialized on the host; this orders them on the GPU too, whichever
        # streams the callers are on: the call runs on the caller's current stream, after the
        # previous call's work has finished there.
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(last_call_done)  # a no-op before the first call records it
            outputs = module(*inputs)
            last_call_done.record(stream)
        return outputs

    def close(self) -> None:
        """Free the engines and their GPU memory (idempotent); later calls raise
        :class:`ModelClosedError`. Waits for a call in progress to finish."""
        with self._lock:
            if self.module is None:
                return
            self.module = None
            self._call_context = nullcontext()
            self._wait_for_last_call()
            # The executor holds the engines (or the runners) too: they must go with the module.
            self.executor = NoEngines(reason="closed: the engines were freed")
        gc.collect()  # graph modules hold reference cycles; engines free their memory when collected
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_module(self) -> nn.Module:
        if self.module is None:
            raise ModelClosedError("the model was closed; load it again to call it")
        return self.module
