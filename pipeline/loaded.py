"""A loaded model as deployment code sees it: input-checked, with its runtime policy applied.

Both the pipeline's ``reload`` stage and :func:`pipeline.load_bundle` build one, so what is
verified before publishing is exactly what deployment hosts run.

Calls follow one rule whatever the caller does (see :meth:`LoadedModel.__call__`): autograd
off, outside inference mode, one call at a time per model, and the process-wide CUDA-graph
mode held for the call by the model's runtime.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.backends.base import ModelRuntime, PolicyReport
from pipeline.config.presets import as_policy
from pipeline.config.schema import InputSpec, Precision, RuntimeConfig
from pipeline.errors import BundleError, InputValidationError
from pipeline.models.inputs import torch_dtype
from pipeline.models.shapes import dim_names


@dataclass(frozen=True)
class _ExpectedInput:
    name: str
    dtype: torch.dtype
    low: tuple[int, ...]
    high: tuple[int, ...]
    dims: tuple[str | None, ...]


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
            )
            for spec in specs
        ]
        # Only a name used more than once can disagree; most models have none, so skip the check.
        uses = Counter(name for expected in self.expected for name in expected.dims if name)
        self._has_shared_dims = any(count > 1 for count in uses.values())

    def __call__(self, args: Sequence[object]) -> None:
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
                    f"input '{expected.name}': on {value.device}, expected {self.device}"
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

    def keys(self) -> list[str]:
        """The output names, in order (empty when the model's outputs have none)."""
        return [n for n in self.names if n is not None]

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The outputs by name, as the eager model returned them (named outputs only)."""
        return {n: t for n, t in zip(self.names, self, strict=True) if n is not None}


class LoadedModel:
    """Callable like the model: ``outputs = loaded(*inputs)`` returns :class:`ModelOutputs`."""

    def __init__(
        self,
        module: nn.Module,
        backend: ModelRuntime,
        specs: Sequence[InputSpec],
        precision: Precision,
        device: torch.device,
        policy: RuntimeConfig,
        expected_engines: int | None = None,
        output_names: Sequence[str | None] = (),
    ) -> None:
        self.module = module
        self.output_names = tuple(output_names)
        self.backend = backend
        self.specs = list(specs)
        self.precision = precision
        self.device = device
        self.expected_engines = expected_engines
        self._check_inputs = InputChecker(self.specs, precision, device)
        self._lock = threading.RLock()
        self.policy_report = self.set_runtime(policy)

    @property
    def policy(self) -> RuntimeConfig:
        """The runtime policy in force."""
        return self.policy_report.policy

    def set_runtime(self, runtime: RuntimeConfig | str) -> PolicyReport:
        """Switch the runtime policy (a :class:`RuntimeConfig` or a preset name) on every engine.

        Waits for a call in progress on another thread to finish first.
        """
        policy = as_policy(runtime)
        with self._lock:
            report = self.backend.apply_policy(self.module, policy)
            if self.expected_engines is not None and report.engines_configured != self.expected_engines:
                raise BundleError(
                    f"configured {report.engines_configured} TensorRT engines but the bundle was "
                    f"built with {self.expected_engines}: the artifact does not match its manifest"
                )
            self._call_context = self.backend.call_context(policy)
            self.policy_report = report
        return report

    @contextmanager
    def hold_resources(self) -> Iterator[None]:
        """Keep engine memory allocated between calls for a burst of calls (dynamic policy)."""
        with self._lock, self.backend.hold_resources(self.module, self.policy):
            yield

    def __call__(self, *inputs: torch.Tensor) -> ModelOutputs:
        """Run the model on ``inputs`` (checked first); returns its outputs as a tuple of tensors
        that answers to output names too (:class:`ModelOutputs`).

        Every call runs the same way whatever the caller's autograd state (plain, ``no_grad``,
        ``inference_mode``, in any order): with autograd off and *outside* inference mode, so
        engine state made by one call (CUDA graphs recorded over their input and output buffers,
        pre-allocated outputs) is never touched by a later call under another mode, and outputs
        are ordinary tensors that do not require grad. Calls on one model are serialized (its
        engines keep per-call state); the runtime's call context holds process-wide modes.
        """
        self._check_inputs(inputs)
        with self._lock, self._call_context, torch.inference_mode(False), torch.no_grad():
            return ModelOutputs(self.module(*inputs), self.output_names)
