"""Numerical comparison of a compiled model's outputs with eager PyTorch's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pipeline.runtime.types import Tolerance


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


@dataclass
class VerificationReport:
    """All comparisons of a verification run and the verdict."""

    tolerance: Tolerance
    comparisons: list[OutputComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every output of every input set is within tolerance."""
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def worst(self) -> OutputComparison:
        """The comparison with the largest error relative to what it was allowed."""
        return max(self.comparisons, key=lambda c: c.max_abs_error / max(c.allowed_abs_error, 1e-30))

    def summary(self) -> str:
        """One line: verdict, number of checks, worst errors."""
        worst = self.worst()
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: {len(self.comparisons)} output checks; worst max_abs={worst.max_abs_error:.3g} "
            f"(allowed {worst.allowed_abs_error:.3g}, {worst.input_set} output {worst.output}), "
            f"cosine={min(c.cosine for c in self.comparisons):.6f}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as recorded in the manifest."""
        return {
            "passed": self.passed,
            "tolerance": asdict(self.tolerance),
            "comparisons": [asdict(c) for c in self.comparisons],
        }


def compare(
    input_set: str,
    actual: Sequence[torch.Tensor],
    reference: Sequence[torch.Tensor],
    tolerance: Tolerance,
) -> list[OutputComparison]:
    """Compare each output with its reference, in float64 on the CPU."""
    if len(actual) != len(reference):
        raise ValueError(f"{input_set}: {len(actual)} outputs, reference has {len(reference)}")
    results = []
    for index, (out, ref) in enumerate(zip(actual, reference, strict=True)):
        out64 = out.detach().to("cpu", torch.float64).reshape(-1)
        ref64 = ref.detach().to("cpu", torch.float64).reshape(-1)
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
        results.append(
            OutputComparison(
                input_set=input_set,
                output=index,
                max_abs_error=max_abs,
                max_rel_error=max_rel,
                cosine=cosine,
                allowed_abs_error=allowed,
                passed=finite and max_abs <= allowed and cosine >= tolerance.min_cosine,
            )
        )
    return results
