"""verify: the reloaded artifact vs eager PyTorch on every golden set and fresh random input sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.config.schema import PipelineConfig
from pipeline.models import make_inputs
from pipeline.runtime.format import OPT_SET
from pipeline.runtime.loaded import LoadedModel
from pipeline.runtime.policy import PolicyReport
from pipeline.runtime.verification import VerificationReport, compare, compare_task
from pipeline.stages.build import BuiltModel
from pipeline.stages.serialize import RuntimeCache


@dataclass
class VerifiedModel:
    """The verdict, and eager PyTorch's outputs on each golden input set (the golden reference).

    ``golden_outputs`` are those of the opt-shape set; ``shape_outputs`` those of the other
    shapes' sets (min, max, odd) of a model with dynamic dimensions. ``output_names`` name the
    outputs where the eager model did (dict keys, ``ModelOutput`` fields). ``policy`` is what the
    reloaded model was verified under; ``runtime_cache`` the kernels its runs compiled, to ship
    (TensorRT-RTX through the own runner; None otherwise or when verification failed).
    """

    report: VerificationReport
    golden_outputs: tuple[torch.Tensor, ...]
    policy: PolicyReport
    shape_outputs: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    output_names: list[str | None] = field(default_factory=list)
    runtime_cache: RuntimeCache | None = None

    def golden_sets(
        self, built: BuiltModel
    ) -> dict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]:
        """Every golden set as (inputs, reference outputs), the opt-shape one first."""
        outputs = {OPT_SET: self.golden_outputs, **self.shape_outputs}
        return {name: (inputs, outputs[name]) for name, inputs in built.golden_input_sets().items()}


def verify_model(
    built: BuiltModel, loaded: LoadedModel, config: PipelineConfig, cache_key: dict[str, str]
) -> VerifiedModel:
    """Compare every output on each golden set plus ``verify.random_input_sets`` fresh sets with
    the eager model in the run's precision (for quantized precisions: ModelOpt's simulated
    quantization); for reduced precisions also with the fp32 eager model, task-level. A model that
    passes hands over its runtime cache, filed under ``cache_key`` (every set has run by then)."""
    tolerance = config.verify.tolerance(config.precision)
    task_tolerance = config.verify.task_tolerance(config.precision) if built.reference is not None else None
    report = VerificationReport(tolerance=tolerance, task_tolerance=task_tolerance)
    golden_sets = {
        ("golden" if name == OPT_SET else f"golden-{name}"): inputs
        for name, inputs in built.golden_input_sets().items()
    }
    input_sets = dict(golden_sets)
    for index in range(1, config.verify.random_input_sets + 1):
        input_sets[f"random-{index}"] = make_inputs(
            config.model.inputs, config.verify.seed + index, config.precision, built.device
        )
    references: dict[str, tuple[torch.Tensor, ...]] = {}
    names: list[str | None] = []
    with torch.inference_mode():
        for name, inputs in input_sets.items():
            if name == "golden":
                outputs, names = built.eager.named_outputs(*inputs)
            else:
                outputs = built.eager(*inputs)
            reference = tuple(t.detach().cpu() for t in outputs)
            actual = loaded(*inputs)
            report.comparisons.extend(compare(name, actual, reference, tolerance))
            references[name] = reference
            if task_tolerance is not None and built.reference is not None:
                fp32 = built.reference(*(_as_fp32(t) for t in inputs))
                report.task.extend(compare_task(name, actual, fp32, task_tolerance, names))
    data = loaded.executor.cache_bytes() if report.passed else None
    return VerifiedModel(
        report=report,
        golden_outputs=references["golden"],
        policy=loaded.policy_report,
        shape_outputs={name: references[f"golden-{name}"] for name in built.shape_inputs},
        output_names=names,
        runtime_cache=RuntimeCache(data, cache_key) if data else None,
    )


def _as_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """A floating input as the fp32 reference model takes it; others unchanged."""
    return tensor.float() if tensor.is_floating_point() else tensor
