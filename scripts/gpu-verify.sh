#!/usr/bin/env bash
# On the GPU host, from the repository root: install the wheelhouse, run `make test-gpu` (its log and
# report under $OUT), then on the suite's own BERT bundles the per-call overhead
# (scripts/reload_overhead.py; OVERHEAD=0 skips it) and the concurrency probe as shipped and with
# each of the loader's two fixes undone (scripts/probe/concurrency_probe.py; PROBE=0 skips it), and
# the cold start of the BERT bundle with and without its runtime cache (COLDSTART=0 skips it), and
# its latency in 5 fresh processes, one after another and taking turns (scripts/process_spread.py;
# SPREAD=0 skips it). SUITE=0 skips the
# suite (a later call on a warm machine, without .gpu-wheelhouse: measures the bundles it left, or
# those of `PHASE=build scripts/gpu-serve.sh`). SPREAD_PROBE=1 adds scripts/probe/spread_probe.py
# (where the spread comes from: host or GPU, kernels, clocks), once per SPREAD_PROBE_RUNS entry
# ("policy" or "policy:field=value", e.g. "cudagraphs preallocated:rtx_cuda_graphs=whole_graph_capture").
set -uo pipefail
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
if [ -d /tmp/gpu-site/torch_tensorrt ]; then  # a later call on a warm machine: installed already
  export PYTHONPATH=/tmp/gpu-site LD_LIBRARY_PATH=/tmp/gpu-site/tensorrt_rtx_libs
else
  [ -d .gpu-wheelhouse ] || { echo "machine is new: carry .gpu-wheelhouse"; exit 3; }
  # shellcheck disable=SC1091
  source .gpu-wheelhouse/install.sh .gpu-wheelhouse >"$OUT/install.txt" 2>&1 || { cat "$OUT/install.txt"; exit 3; }
fi
export PYTHONUNBUFFERED=1 GPU_REPORT="$OUT/gpu-report.json"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
# Host facts that latency depends on: CPUs and NUMA nodes, the GPU's CPU affinity, a CUDA compiler.
{ lscpu | grep -E "^(Model name|CPU\(s\)|NUMA|Socket)"; nvidia-smi topo -m; echo "nvcc: $(command -v nvcc || echo none)"; } \
  >"$OUT/host.txt" 2>&1
# The newest BERT fp16 bundle of a policy: the GPU suite's, else gpu-serve.sh's build (preallocated).
bert_bundle() {
  ls -dt /tmp/pytest-of-*/pytest-*/*/bundles/bert-fp16-"$1"-* /tmp/serve-artifacts/bundles/bert-fp16-"$1"-* 2>/dev/null | head -n 1
}
status=0
if [ "${SUITE:-1}" = 1 ]; then  # SUITE=0: the measurements below on the bundles an earlier call's suite left
  start=$(date +%s)
  timeout -k 5 "${GPU_SUITE_LIMIT:-450}" make test-gpu GPU_PY=python3 >"$OUT/test-gpu.log" 2>&1
  status=$?
  echo "make test-gpu: rc $status in $(( $(date +%s) - start )) s"
  grep -E "^(FAILED|ERROR)|passed|failed|^[0-9.]+s (call|setup)" "$OUT/test-gpu.log" | tail -30
fi
if [ "${OVERHEAD:-1}" = 1 ]; then
  for policy in preallocated cudagraphs; do
    bundle=$(bert_bundle "$policy") runtime=()
    [ -n "$bundle" ] || { bundle=$(bert_bundle preallocated) runtime=(--runtime "$policy"); }
    [ -n "$bundle" ] || continue
    echo "per-call overhead, bert fp16 $policy:"
    python3 scripts/reload_overhead.py "$bundle" "${runtime[@]}" --json "$OUT/overhead-$policy.json" 2>"$OUT/overhead-$policy.err" \
      | grep -E "median|graph ops|run on" || tail -n 5 "$OUT/overhead-$policy.err"
  done
fi
if [ "${CALL_PROFILE:-1}" = 1 ]; then
  # Host time per call path by path, and what blocks (scripts/probe/call_profile.py).
  bundle=$(bert_bundle preallocated)
  for policy in preallocated cudagraphs; do
    [ -n "$bundle" ] && python3 scripts/probe/call_profile.py "$bundle" --runtime $policy \
      >"$OUT/call-profile-$policy.txt" 2>&1 && grep "===" "$OUT/call-profile-$policy.txt" | sed "s/^/$policy /"
  done
fi
if [ "${COLDSTART:-1}" = 1 ]; then
  # Process start to first output of the suite's BERT fp16 bundle: with its runtime cache (own
  # runner), and with runtime_cache=off (C++ runtime, kernels compiled at load: what a miss costs).
  bundle=$(bert_bundle preallocated)
  if [ -n "$bundle" ]; then
    for cache in auto off; do
      (cd /tmp && PYTHONPATH="$OLDPWD:$PYTHONPATH" python3 -m pipeline.bundle coldstart "$bundle" --repeats "${COLDSTART_REPEATS:-2}" \
        --runtime-cache $cache --json "$OUT/coldstart-$cache.json" >/dev/null 2>"$OUT/coldstart-$cache.err") \
        || tail -n 5 "$OUT/coldstart-$cache.err"
      python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('coldstart runtime_cache=' + sys.argv[2], {k: round(v, 3) for k, v in d['median'].items()}, d['runs'][0].get('engines'))" \
        "$OUT/coldstart-$cache.json" $cache 2>/dev/null
    done
  fi
fi
if [ "${SPREAD:-1}" = 1 ]; then
  bundle=$(bert_bundle preallocated)
  # Sequential fresh processes with the bench's 1 s warm-up floor (the way the target is stated),
  # then the same processes alive at once taking turns (host drift over the run hits all alike);
  # under cudagraphs too (one launch per call: the GPU, not the host's launch rate, sets the pace).
  for run in ${SPREAD_RUNS:-preallocated:sequential preallocated:interleaved cudagraphs:sequential cudagraphs:interleaved}; do
    policy=${run%%:*} mode=${run##*:} how=(); [ "$mode" = interleaved ] && how=(--interleaved)
    echo "process spread, $policy, $mode:"
    [ -n "$bundle" ] && PYTHONPATH=".:$PYTHONPATH" python3 scripts/process_spread.py "$bundle" --processes 5 \
      --runtime "$policy" --iterations "${SPREAD_ITERATIONS:-500}" --warmup-seconds 1 "${how[@]}" \
      --json "$OUT/process-spread-$policy-$mode.json" 2>"$OUT/process-spread.err" | tail -n 7 \
      || tail -n 5 "$OUT/process-spread.err"
  done
fi
if [ "${SPREAD_PROBE:-0}" = 1 ]; then
  bundle=$(bert_bundle preallocated)
  for run in ${SPREAD_PROBE_RUNS:-preallocated cudagraphs}; do
    policy=${run%%:*} setting=(); [ "$run" != "$policy" ] && setting=(--set "${run#*:}")
    echo "spread probe, $run:"
    [ -n "$bundle" ] && PYTHONPATH=".:$PYTHONPATH" python3 scripts/probe/spread_probe.py "$bundle" \
      --processes "${SPREAD_PROBE_PROCESSES:-6}" --runtime "$policy" "${setting[@]}" --pin 3 \
      --json "$OUT/spread-probe-${run//[:=]/-}.json" 2>"$OUT/spread-probe.err" || tail -n 8 "$OUT/spread-probe.err"
  done
fi
if [ "${PROBE:-1}" = 1 ]; then
  for policy in cudagraphs preallocated; do
    bundle=$(ls -dt /tmp/pytest-of-*/pytest-*/*/bundles/bert-fp16-"$policy"-* 2>/dev/null | head -n 1)
    [ -n "$bundle" ] || { echo "no bert-fp16-$policy bundle left by the suite"; continue; }
    for undo in "" "--undo unowned" "--undo order"; do
      # shellcheck disable=SC2086
      PYTHONPATH=".:$PYTHONPATH" python3 scripts/probe/concurrency_probe.py "$bundle" $undo 2>/dev/null \
        | tail -n 1 | tee -a "$OUT/concurrency-probe.jsonl"
    done
  done
fi
exit "$status"
