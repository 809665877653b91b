"""A loaded model as deployment code sees it: input-checked, with its runtime policy applied.

Both the pipeline's ``reload`` stage and :func:`pipeline.load_bundle` build one, so what is
verified before publishing is exactly what deployment hosts run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.backends.base import Backend, PolicyReport
from pipeline.config.presets import as_policy
from pipeline.config.schema import InputSpec, Precision, RuntimeConfig
from pipeline.errors import BundleError, InputValidationError
from pipeline.models.inputs import torch_dtype


@dataclass(frozen=True)
class _ExpectedInput:
    name: str
    dtype: torch.dtype
    low: tuple[int, ...]
    high: tuple[int, ...]


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
            )
            for spec in specs
        ]

    def __call__(self, args: Sequence[object]) -> None:
        if len(args) != len(self.expected):
            names = ", ".join(e.name for e in self.expected)
            raise InputValidationError(f"expected {len(self.expected)} inputs ({names}), got {len(args)}")
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
            if len(shape) != len(expected.low) or any(
                not lo <= d <= hi for lo, d, hi in zip(expected.low, shape, expected.high, strict=True)
            ):
                raise InputValidationError(
                    f"input '{expected.name}': shape {tuple(shape)} outside the declared range "
                    f"{list(expected.low)}..{list(expected.high)}"
                )


class LoadedModel:
    """Callable like the model: ``outputs = loaded(*inputs)`` returns a tuple of tensors."""

    def __init__(
        self,
        module: nn.Module,
        backend: Backend,
        specs: Sequence[InputSpec],
        precision: Precision,
        device: torch.device,
        policy: RuntimeConfig,
        expected_engines: int | None = None,
    ) -> None:
        self.module = module
        self.backend = backend
        self.specs = list(specs)
        self.precision = precision
        self.device = device
        self.expected_engines = expected_engines
        self._check_inputs = InputChecker(self.specs, precision, device)
        self.policy_report = self.set_runtime(policy)

    @property
    def policy(self) -> RuntimeConfig:
        """The runtime policy in force."""
        return self.policy_report.policy

    def set_runtime(self, runtime: RuntimeConfig | str) -> PolicyReport:
        """Switch the runtime policy (a :class:`RuntimeConfig` or a preset name) on every engine."""
        policy = as_policy(runtime)
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
        with self.backend.hold_resources(self.module, self.policy):
            yield

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check_inputs(inputs)
        if torch.is_grad_enabled():
            with torch.inference_mode(), self._call_context:
                return tuple(self.module(*inputs))
        with self._call_context:
            return tuple(self.module(*inputs))
