#!/usr/bin/env bash
# On the GPU host, from the repository root: install the wheelhouse, run `make bench` (the two seed
# scenarios), the per-call overhead comparison, refit vs rebuild (BERT fp16) and a 3-job submitit
# sweep (BERT fp16 x standard / preallocated / cudagraphs); copy reports and figures under $OUT.
set -uo pipefail
OUT=${OUT:-artifacts/gpu}
ARTIFACTS=${BENCH_ARTIFACTS:-/tmp/bench-artifacts}
mkdir -p "$OUT"
# shellcheck disable=SC1091
source .gpu-wheelhouse/install.sh .gpu-wheelhouse || exit 1
export PYTHONUNBUFFERED=1
quiet() { grep --line-buffered -vE "WARNING|modelopt|createInfer|TRT-LLM"; }
make bench ARTIFACTS="$ARTIFACTS" 2>&1 | quiet | tee "$OUT/bench.log"
status=${PIPESTATUS[0]}
cp "$ARTIFACTS/report.md" "$ARTIFACTS/report.png" "$OUT/" 2>/dev/null
bert=$(ls -d "$ARTIFACTS"/bundles/bert-fp16-preallocated-* 2>/dev/null | head -n 1)
if [ -n "$bert" ]; then
  python3 scripts/reload_overhead.py "$bert" --json "$OUT/reload-overhead.json" 2>&1 | quiet
  python3 -m pipeline.bundle bench "$bert" --json "$OUT/bert-bundle-bench.json" 2>&1 | quiet
  du -b "$bert"/model/* "$bert"/golden.safetensors | tee "$OUT/bert-sizes.txt"
fi
python3 scripts/refit_bench.py --artifacts "$ARTIFACTS/refit-bench" --json "$OUT/refit-bench.json" 2>&1 \
  | quiet | tail -n 30
python3 -m pipeline -m hydra/launcher=local model=bert precision=fp16 runtime=standard,preallocated,cudagraphs \
  artifacts_dir="$ARTIFACTS" hydra.sweep.dir="$ARTIFACTS/sweep" 2>&1 | quiet | tail -n 25
cp "$ARTIFACTS/sweep/summary.md" "$OUT/sweep-summary.md" 2>/dev/null
exit "$status"
