"""Triton Python backend for a bundle: ``1/model.py`` of an exported repository imports this.

Each model instance loads the bundle once, on the instance's device (``KIND_GPU``: its GPU), with
its recorded runtime policy, and runs the golden check in ``initialize``: a bundle that fails its
integrity, signature, host or golden check fails the model's load, so the server never reports
it ready, and Triton's log holds the one-line reason. Bad inputs answer ``INVALID_ARG`` (HTTP 400)
with the loaded model's one-line message; nothing answers with a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline.errors import one_line
from pipeline.serve.repository import bundle_in
from pipeline.serve.serving import ServedBundle
from pipeline.serve.triton_config import RUNTIME_POLICY_PARAMETER


class TritonPythonModel:
    """The class Triton's Python backend looks for in ``model.py``."""

    served: ServedBundle

    def initialize(self, args: dict[str, str]) -> None:
        """Load and golden-check the bundle on this instance's device."""
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{int(args['model_instance_device_id'])}"
        try:
            policy = config.get("parameters", {}).get(RUNTIME_POLICY_PARAMETER, {}).get("string_value")
            self.served = ServedBundle.load(
                bundle_in(version_dir),
                device=device,
                batching=int(config.get("max_batch_size", 0)) > 0,
                runtime=policy or None,
            )
        except Exception as exc:
            # Triton logs this message as the reason the model failed to load.
            raise pb_utils.TritonModelException(
                f"bundle refused ({args['model_instance_name']} on {device}): {one_line(exc)}"
            ) from None
        manifest, report = self.served.manifest, self.served.loaded.policy_report
        applied = "applied" if report.applied else f"not applied: {report.reason}"
        pb_utils.Logger.log_info(
            f"{manifest.model_name} bundle {manifest.bundle_id} ready on {device} under "
            f"runtime={report.policy.name} ({applied}): golden check passed"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer a batch of requests, one response each, in order."""
        started = time.perf_counter()
        pb = self._pb
        inputs = [{tensor.name(): tensor.as_numpy() for tensor in request.inputs()} for request in requests]
        # Outputs no caller asked for (BERT's hidden states beside its pooled output) are neither
        # copied to the host nor checked: Triton would drop them from the answers anyway.
        outcomes = self.served.run(inputs, [request.requested_output_names() for request in requests])
        answering = time.perf_counter()
        responses = []
        for outcome in outcomes:
            if outcome.error is not None:
                code = pb.TritonError.INVALID_ARG if outcome.invalid else pb.TritonError.INTERNAL
                responses.append(pb.InferenceResponse(error=pb.TritonError(outcome.error, code)))
                continue
            tensors = [pb.Tensor(name, value) for name, value in outcome.outputs.items()]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
        profile = self.served.profile
        if profile is not None:
            finished = time.perf_counter()
            profile.add("answer", finished - answering)
            profile.add("execute", finished - started)
        return responses

    def finalize(self) -> None:
        """Free the model when Triton unloads it."""
        served = getattr(self, "served", None)
        if served is not None:
            if served.profile is not None:
                self._pb.Logger.log_info(served.profile.summary())
            served.close()
