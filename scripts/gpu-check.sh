#!/usr/bin/env bash
# On the GPU host, from the repository root: install the Torch-TensorRT wheelhouse, then run the
# GPU suite and write its log and figures under $OUT (default artifacts/gpu).
#   scripts/gpu-check.sh                       # make test-gpu (bert fp16, resnet50 fp32)
#   GPU_TEST_CASES=tiny_bert:fp16 scripts/gpu-check.sh
set -uo pipefail
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source .gpu-wheelhouse/install.sh .gpu-wheelhouse || exit 1
export PYTHONUNBUFFERED=1 GPU_REPORT="$OUT/gpu-report.json"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
make test-gpu 2>&1 | tee "$OUT/test-gpu.log"
exit "${PIPESTATUS[0]}"
