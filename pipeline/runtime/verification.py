"""Numerical comparison of a compiled model's outputs with eager PyTorch's.

An output holding NaN or Inf fails whatever the tolerance, on every path (the exact check, the
task-level check, the reference too): a NaN compares false with everything, so a check written
as ``error <= allowed`` alone could never say why it failed, and one written as
``not error > allowed`` would pass it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pipeline.runtime.types import TaskTolerance, Tolerance

#: Output names that mark a classifier's logits (top-1 agreement applies to them).
CLASSIFIER_OUTPUT_NAMES = (None, "logits")


@dataclass
class OutputComparison:
    """Errors of one output on one input set."""

    input_set: str
    output: int
    max_abs_error: float
    max_rel_error: float
    cosine: float
    allowed_abs_error: float
    passed: bool
    #: False when the output (``finite``) or its reference (``reference_finite``) holds NaN/Inf.
    finite: bool = True
    reference_finite: bool = True


@dataclass
class TaskComparison:
    """Agreement of one output with the fp32 eager model's on one input set.

    ``top1`` is None for outputs that are not classifier logits.
    """

    input_set: str
    output: int
    cosine: float
    top1: float | None
    passed: bool
    finite: bool = True


@dataclass
class VerificationReport:
    """All comparisons of a verification run and the verdict.

    ``task`` holds the task-level comparisons with fp32 eager (reduced precisions only).
    """

    tolerance: Tolerance
    comparisons: list[OutputComparison] = field(default_factory=list)
    task_tolerance: TaskTolerance | None = None
    task: list[TaskComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every output of every input set is finite and within tolerance."""
        exact = bool(self.comparisons) and all(c.passed for c in self.comparisons)
        return exact and all(t.passed for t in self.task)

    def worst(self) -> OutputComparison:
        """The comparison with the largest error relative to what it was allowed (a non-finite
        one first)."""
        return max(
            self.comparisons,
            key=lambda c: (
                not (c.finite and c.reference_finite),
                _ratio(c.max_abs_error, c.allowed_abs_error),
            ),
        )

    def summary(self) -> str:
        """One line: verdict, number of checks, worst errors (or the first non-finite output)."""
        verdict = "PASS" if self.passed else "FAIL"
        broken = next((c for c in self.comparisons if not (c.finite and c.reference_finite)), None)
        if broken is not None:
            whose = "the model's" if not broken.finite else "the eager reference's"
            return (
                f"{verdict}: {whose} output {broken.output} holds NaN or Inf on {broken.input_set} "
                "(refused whatever the tolerance)"
            )
        broken_task = next((t for t in self.task if not t.finite), None)
        if broken_task is not None:
            return (
                f"{verdict}: output {broken_task.output} holds NaN or Inf on {broken_task.input_set} "
                "(vs fp32 eager; refused whatever the tolerance)"
            )
        worst = self.worst()
        text = (
            f"{verdict}: {len(self.comparisons)} output checks; worst max_abs={worst.max_abs_error:.3g} "
            f"(allowed {worst.allowed_abs_error:.3g}, {worst.input_set} output {worst.output}), "
            f"cosine={min(c.cosine for c in self.comparisons):.6f}"
        )
        if self.task and self.task_tolerance is not None:
            cosine = min(t.cosine for t in self.task)
            top1 = [t.top1 for t in self.task if t.top1 is not None]
            text += f"; vs fp32 eager: cosine={cosine:.6f} (min {self.task_tolerance.min_cosine:g})" + (
                f", top-1 agreement={min(top1):.3f} (min {self.task_tolerance.min_top1:g})" if top1 else ""
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as recorded in the manifest."""
        data: dict[str, Any] = {
            "passed": self.passed,
            "tolerance": asdict(self.tolerance),
            "comparisons": [asdict(c) for c in self.comparisons],
        }
        if self.task_tolerance is not None:
            data["task_tolerance"] = asdict(self.task_tolerance)
            data["task"] = [asdict(t) for t in self.task]
        return data


def _ratio(error: float, allowed: float) -> float:
    ratio = error / max(allowed, 1e-30)
    return ratio if ratio == ratio else float("inf")  # NaN sorts as the worst


def _flat64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float64).reshape(-1)


def compare(
    input_set: str,
    actual: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    tolerance: Tolerance,
) -> list[OutputComparison]:
    """Compare each output with its reference, in float64 on the CPU; an output or reference
    holding NaN or Inf fails."""
    if len(actual) != len(reference):
        raise ValueError(f"{input_set}: {len(actual)} outputs, reference has {len(reference)}")
    results = []
    for index, (out, ref) in enumerate(zip(actual, reference, strict=True)):
        out64, ref64 = _flat64(out), _flat64(ref)
        if out64.shape != ref64.shape:
            raise ValueError(
                f"{input_set}: output {index} has {out64.numel()} values, reference {ref64.numel()}"
            )
        diff = (out64 - ref64).abs()
        max_abs = float(diff.max()) if diff.numel() else 0.0
        max_rel = float((diff / ref64.abs().clamp_min(1e-6)).max()) if diff.numel() else 0.0
        cosine = float(torch.nn.functional.cosine_similarity(out64, ref64, dim=0, eps=1e-30))
        if not out64.any() and not ref64.any():
            cosine = 1.0
        allowed = tolerance.atol + tolerance.rtol * (float(ref64.abs().max()) if ref64.numel() else 0.0)
        finite = bool(torch.isfinite(out64).all())
        reference_finite = bool(torch.isfinite(ref64).all())
        results.append(
            OutputComparison(
                input_set=input_set,
                output=index,
                max_abs_error=max_abs,
                max_rel_error=max_rel,
                cosine=cosine,
                allowed_abs_error=allowed,
                passed=finite and reference_finite and max_abs <= allowed and cosine >= tolerance.min_cosine,
                finite=finite,
                reference_finite=reference_finite,
            )
        )
    return results


def top1_agreement(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """The share of rows of 2-D ``actual`` whose argmax equals ``reference``'s."""
    agree = actual.detach().float().cpu().argmax(dim=-1) == reference.detach().float().cpu().argmax(dim=-1)
    return float(agree.double().mean())


def compare_task(
    input_set: str,
    actual: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    tolerance: TaskTolerance,
    names: Sequence[str | None] = (),
) -> list[TaskComparison]:
    """Task-level agreement of each output with the fp32 reference's: cosine on every output,
    top-1 agreement on classifier logits (2-D, more than one class, unnamed or named
    ``logits``); an output or reference holding NaN or Inf fails."""
    if len(actual) != len(reference):
        raise ValueError(f"{input_set}: {len(actual)} outputs, reference has {len(reference)}")
    results = []
    for index, (out, ref) in enumerate(zip(actual, reference, strict=True)):
        out64, ref64 = _flat64(out), _flat64(ref)
        finite = bool(torch.isfinite(out64).all()) and bool(torch.isfinite(ref64).all())
        cosine = float(torch.nn.functional.cosine_similarity(out64, ref64, dim=0, eps=1e-30))
        if not out64.any() and not ref64.any():
            cosine = 1.0
        name = names[index] if index < len(names) else None
        classifier = out.dim() == 2 and out.shape[-1] > 1 and name in CLASSIFIER_OUTPUT_NAMES
        top1 = top1_agreement(out, ref) if classifier and finite else None
        passed = finite and cosine >= tolerance.min_cosine and (top1 is None or top1 >= tolerance.min_top1)
        results.append(TaskComparison(input_set, index, cosine, top1, passed, finite))
    return results
