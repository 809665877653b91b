"""verify: the reloaded artifact vs eager PyTorch on the golden and fresh random input sets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config.schema import PipelineConfig
from pipeline.loaded import LoadedModel
from pipeline.models import make_inputs
from pipeline.stages.build import BuiltModel
from pipeline.verification import VerificationReport, compare


@dataclass
class VerifiedModel:
    """The verdict, and eager PyTorch's outputs on the golden inputs (the golden reference)."""

    report: VerificationReport
    golden_outputs: tuple[torch.Tensor, ...]


def verify_model(built: BuiltModel, loaded: LoadedModel, config: PipelineConfig) -> VerifiedModel:
    """Compare every output on the golden set plus ``verify.random_input_sets`` fresh sets."""
    tolerance = config.verify.tolerance(config.precision)
    report = VerificationReport(tolerance=tolerance)
    input_sets = {"golden": built.golden_inputs}
    for index in range(1, config.verify.random_input_sets + 1):
        input_sets[f"random-{index}"] = make_inputs(
            config.model.inputs, config.verify.seed + index, config.precision, built.device
        )
    golden_outputs: tuple[torch.Tensor, ...] = ()
    with torch.inference_mode():
        for name, inputs in input_sets.items():
            reference = tuple(t.detach().cpu() for t in built.eager(*inputs))
            report.comparisons.extend(compare(name, loaded(*inputs), reference, tolerance))
            if name == "golden":
                golden_outputs = reference
    return VerifiedModel(report=report, golden_outputs=golden_outputs)
