#!/usr/bin/env bash
# On the GPU host, from the repository root: install the Torch-TensorRT wheelhouse, then run the
# GPU suite and write its log and figures under $OUT (default artifacts/gpu).
#   scripts/gpu-check.sh                       # make test-gpu (bert fp16, resnet50 fp32)
#   GPU_TEST_CASES=tiny_bert:fp16 scripts/gpu-check.sh
# scripts/gpu-verify.sh does the same and then measures on the suite's bundles.
OVERHEAD=0 PROBE=0 exec "$(dirname "$0")/gpu-verify.sh"
