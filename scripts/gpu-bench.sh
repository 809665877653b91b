#!/usr/bin/env bash
# On the GPU host, from the repository root: install the wheelhouse, run `make bench` (the two seed
# scenarios, cold starts in fresh processes, the report), then per-call overhead of a loaded BERT
# bundle, pack and unpack times (plain tar vs gzip) and a cold start from the shipped archive;
# copy reports and figures under $OUT. BENCH_EXTRAS=1 adds refit vs rebuild and make bench-sweep.
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
cp -r "$ARTIFACTS/coldstart" "$OUT/" 2>/dev/null
bert=$(ls -d "$ARTIFACTS"/bundles/bert-fp16-preallocated-* 2>/dev/null | head -n 1)
if [ -n "$bert" ]; then
  python3 scripts/reload_overhead.py "$bert" --json "$OUT/reload-overhead.json" 2>&1 | quiet
  du -b "$bert"/engines/* "$bert"/model/* "$bert"/golden.safetensors | tee "$OUT/bert-sizes.txt"
  shipped=$(mktemp -d)
  for compression in none gz; do
    suffix=$([ "$compression" = gz ] && echo .tar.gz || echo .tar)
    start=$(date +%s%N)
    python3 -m pipeline.bundle pack "$bert" --compression "$compression" -o "$shipped/bert$suffix" >/dev/null
    end=$(date +%s%N)
    echo "pack $compression: $(( (end - start) / 1000000 )) ms (CLI process)," \
      "$(stat -c %s "$shipped/bert$suffix") bytes" | tee -a "$OUT/pack.txt"
  done
  python3 -m pipeline.bundle coldstart "$shipped/bert.tar" --repeats 3 --json "$OUT/coldstart-shipped-tar.json" 2>&1 | quiet
  python3 -m pipeline.bundle coldstart "$shipped/bert.tar.gz" --repeats 1 --json "$OUT/coldstart-shipped-targz.json" 2>&1 | quiet
fi
if [ "${BENCH_EXTRAS:-0}" = 1 ]; then
  python3 scripts/refit_bench.py --artifacts "$ARTIFACTS/refit-bench" --json "$OUT/refit-bench.json" 2>&1 \
    | quiet | tail -n 30
  make bench-sweep ARTIFACTS="$ARTIFACTS" GPU_PY=python3 2>&1 | quiet | tail -n 25
  cp "$ARTIFACTS/sweep/report.md" "$OUT/sweep-report.md" 2>/dev/null
fi
exit "$status"
