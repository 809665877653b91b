"""What tritonserver's Python backend and HTTP cost a request when the model does no work at all.

    python scripts/probe/triton_floor.py [--requests 1000] [--json OUT]

Serves an "echo" model through the same ``tritonserver`` launch as ``python -m pipeline.serve``
(Python backend, one CPU instance): it reads BERT-base's two 1x128 int32 inputs and answers
BERT-base fp16's outputs (1x128x768 hidden states, 196 KB, and the 1x768 pooled output) from
arrays made once, without copying or computing anything. Through ``ServeClient.infer(..., binary=True)`` on
one kept-alive connection (the client ``serve_bench.py`` times), p50/p99 of: the readiness route
(HTTP alone), the echo with both outputs, the echo asking for the pooled output only. Whatever a
served model does, a request through this path costs at least the echo's time: the floor under
the "HTTP adds <= 0.5 ms" target of issue 22, with our model code out of the picture.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from anywhere

from pipeline.serve import ServeClient
from pipeline.serve.server import TritonServer

CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 0
input [
  { name: "input_ids" data_type: TYPE_INT32 dims: [ 1, 128 ] },
  { name: "token_type_ids" data_type: TYPE_INT32 dims: [ 1, 128 ] }
]
output [
  { name: "last_hidden_state" data_type: TYPE_FP16 dims: [ 1, 128, 768 ] },
  { name: "pooler_output" data_type: TYPE_FP16 dims: [ 1, 768 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# The stub embeds the interpreter's own sys.path: the launcher passes its own (and numpy < 2 first
# where PIPELINE_SERVE_BACKEND_PATH says), as pipeline/serve/model_shim.py takes it.
MODEL = textwrap.dedent(
    """
    import os
    import sys

    for entry in reversed([e for e in os.environ.get("PIPELINE_SERVE_SYS_PATH", "").split(os.pathsep) if e]):
        sys.path.insert(0, entry)

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.hidden = np.zeros((1, 128, 768), dtype=np.float16)
            self.pooled = np.zeros((1, 768), dtype=np.float16)

        def execute(self, requests):
            answers = []
            for request in requests:
                for name in ("input_ids", "token_type_ids"):
                    pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                answers.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("last_hidden_state", self.hidden),
                            pb_utils.Tensor("pooler_output", self.pooled),
                        ]
                    )
                )
            return answers
    """
)


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 / p99 in milliseconds."""
    ordered = sorted(samples_s)
    return {
        "p50_ms": round(1e3 * statistics.median(ordered), 4),
        "p99_ms": round(1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    request = {
        "input_ids": np.zeros((1, 128), dtype=np.int32),
        "token_type_ids": np.zeros((1, 128), dtype=np.int32),
    }
    result: dict[str, Any] = {"requests": args.requests}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        model = workdir / "models" / "echo"
        (model / "1").mkdir(parents=True)
        (model / "config.pbtxt").write_text(CONFIG)
        (model / "1" / "model.py").write_text(MODEL)
        with (workdir / "tritonserver.log").open("w") as log:
            server = TritonServer(workdir / "models", port=0, metrics_port=0, workdir=workdir, log=log)
            server.start(timeout_s=120)
            try:
                client = ServeClient(server.url)
                calls: dict[str, Callable[[], object]] = {
                    "http_ready": client.ready,
                    "echo_all_outputs": lambda: client.infer("echo", request, binary=True),
                    "echo_pooler_output_only": lambda: client.infer(
                        "echo", request, outputs=["pooler_output"], binary=True
                    ),
                }
                samples: dict[str, list[float]] = {name: [] for name in calls}
                for call in calls.values():
                    for _ in range(50):
                        call()
                for _ in range(args.requests):  # the ways take turns
                    for name, call in calls.items():
                        start = time.perf_counter()
                        call()
                        samples[name].append(time.perf_counter() - start)
                client.close()
            finally:
                server.stop()
    for name, values in samples.items():
        result[name] = percentiles(values)
        print(f"{name:26s} p50 {result[name]['p50_ms']:.3f} ms  p99 {result[name]['p99_ms']:.3f} ms")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
