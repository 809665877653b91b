#!/usr/bin/env bash
# Serving on the GPU host, in device calls back to back (the TensorRT-RTX wheelhouse and the
# serve wheels do not fit in one call's 64 MiB; a warm host keeps /tmp between calls):
#   call 1, carry .gpu-wheelhouse:   OUT=$OUT PHASE=build bash scripts/gpu-serve.sh
#     installs the wheelhouse into /tmp/gpu-site and builds BERT fp16 (static 1x128) and
#     bert_dynamic fp16 bundles (preallocated) under /tmp/serve-artifacts (MODELS=bert: the first only);
#   (or instead of call 1: scripts/gpu-verify.sh, whose GPU suite leaves both bundles in /tmp)
#   call 2, carry .serve-wheelhouse: OUT=$OUT PHASE=serve bash scripts/gpu-serve.sh
#     installs nvidia-pytriton and numpy<2 (the backend stub's) into /tmp/serve-site.
#   call 3, carry .serve-client-wheelhouse: OUT=$OUT PHASE=tune bash scripts/gpu-serve.sh
#     installs tritonclient & co. into /tmp/serve-client, runs the GPU serving tests, then
#     `python -m pipeline.serve tune` on the bert_dynamic bundle (TUNE_ARGS adds to its command
#     line), serves the winner's repository and runs `check` against it. Calls 2 and 3 fit one
#     call that carries both wheelhouses: PHASE=serve, then PHASE=tune.
#   call 4 (optional, no carry): OUT=$OUT PHASE=bench bash scripts/gpu-serve.sh
#     scripts/serve_bench.py: HTTP vs in-process latency on the static bundle, dynamic batching vs
#     serial requests on the dynamic one. Results under $OUT.
set -uo pipefail
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUNDLES=/tmp/serve-artifacts
case "${PHASE:?PHASE=build, serve, tune or bench}" in
build)
  # shellcheck disable=SC1091
  GPU_SITE=/tmp/gpu-site source .gpu-wheelhouse/install.sh .gpu-wheelhouse >"$OUT/install.txt" 2>&1 \
    || { cat "$OUT/install.txt"; exit 3; }
  for model in ${MODELS:-bert bert_dynamic}; do
    python3 -m pipeline model=$model precision=fp16 runtime=preallocated backend=tensorrt \
      artifacts_dir=$BUNDLES >"$OUT/build-$model.log" 2>&1 || { tail -n 20 "$OUT/build-$model.log"; exit 1; }
    grep '^bundle: ' "$OUT/build-$model.log"
  done
  ;;
serve)
  [ -d /tmp/gpu-site/torch_tensorrt ] || { echo "machine is new: run PHASE=build first"; exit 3; }
  rm -rf /tmp/serve-site /tmp/serve-numpy
  { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/serve-site .serve-wheelhouse/nvidia_pytriton-*.whl \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/serve-numpy .serve-wheelhouse/numpy-*.whl; } \
    >"$OUT/serve-install.txt" 2>&1 || { cat "$OUT/serve-install.txt"; exit 3; }
  # The backend stub needs numpy < 2; this process keeps the host's numpy 2 (transformers needs it).
  export PYTHONPATH=.:/tmp/serve-site:/tmp/gpu-site LD_LIBRARY_PATH=/tmp/gpu-site/tensorrt_rtx_libs \
    PIPELINE_SERVE_BACKEND_PATH=/tmp/serve-numpy
  python3 -c "import numpy, torch; print('numpy', numpy.__version__, '| torch', torch.__version__)"
  ;;
bench)
  [ -d /tmp/serve-client/tritonclient ] || { echo "run PHASE=serve and PHASE=tune first (the client wheels)"; exit 3; }
  export PYTHONPATH=.:/tmp/serve-client:/tmp/serve-site:/tmp/gpu-site LD_LIBRARY_PATH=/tmp/gpu-site/tensorrt_rtx_libs \
    PIPELINE_SERVE_BACKEND_PATH=/tmp/serve-numpy
  status=0
  # Bundles of this run's GPU suite (scripts/gpu-verify.sh) if it left them, else PHASE=build's.
  static=$(ls -dt /tmp/pytest-of-*/pytest-*/*/bundles/bert-fp16-preallocated-* $BUNDLES/bundles/bert-fp16-preallocated-* 2>/dev/null | head -n 1)
  dynamic=$(ls -dt /tmp/pytest-of-*/pytest-*/*/bundles/bert_dynamic-fp16-* $BUNDLES/bundles/bert_dynamic-fp16-* 2>/dev/null | head -n 1)
  echo "bundles: $static $dynamic"
  # Call by call and in blocks of 100 (the client process's own GPU calls then pause), and the
  # same BERT under cudagraphs (fewer host-side launches in the server's model).
  python3 scripts/serve_bench.py latency "$static" --requests 600 --json "$OUT/serve-latency.json" \
    >"$OUT/serve-latency.log" 2>&1 || { tail -n 20 "$OUT/serve-latency.log"; status=1; }
  python3 scripts/serve_bench.py latency "$static" --requests 600 --block 100 --json "$OUT/serve-latency-blocks.json" \
    >"$OUT/serve-latency-blocks.log" 2>&1 || { tail -n 20 "$OUT/serve-latency-blocks.log"; status=1; }
  graphs=$(ls -dt /tmp/pytest-of-*/pytest-*/*/bundles/bert-fp16-cudagraphs-* 2>/dev/null | head -n 1)
  if [ -n "$graphs" ]; then
    python3 scripts/serve_bench.py latency "$graphs" --requests 600 --json "$OUT/serve-latency-cudagraphs.json" \
      >"$OUT/serve-latency-cudagraphs.log" 2>&1 || { tail -n 20 "$OUT/serve-latency-cudagraphs.log"; status=1; }
  fi
  python3 scripts/serve_bench.py batching "$dynamic" --seconds 8 --clients 32 --json "$OUT/serve-batching.json" \
    >"$OUT/serve-batching.log" 2>&1 || { tail -n 20 "$OUT/serve-batching.log"; status=1; }
  cat "$OUT"/serve-*.json 2>/dev/null
  exit "$status"
  ;;
tune)
  [ -d /tmp/serve-site/pytriton ] || { echo "no nvidia-pytriton in /tmp/serve-site: run PHASE=serve first"; exit 3; }
  rm -rf /tmp/serve-client
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/serve-client \
    .serve-client-wheelhouse/*.whl >"$OUT/client-install.txt" 2>&1 || { cat "$OUT/client-install.txt"; exit 3; }
  export PYTHONPATH=.:/tmp/serve-client:/tmp/serve-site:/tmp/gpu-site LD_LIBRARY_PATH=/tmp/gpu-site/tensorrt_rtx_libs \
    PIPELINE_SERVE_BACKEND_PATH=/tmp/serve-numpy
  status=0
  if [ "${SERVE_TESTS:-1}" != 0 ]; then
    timeout -k 5 "${SERVE_TEST_LIMIT:-200}" python3 -m pytest -v -p no:cacheprovider tests/gpu/test_serving.py \
      >"$OUT/test-serving.log" 2>&1 || status=1
    grep -E "passed|failed|error" "$OUT/test-serving.log" | tail -3
  fi
  dynamic=$(ls -dt /tmp/pytest-of-*/pytest-*/*/bundles/bert_dynamic-fp16-* $BUNDLES/bundles/bert_dynamic-fp16-* 2>/dev/null | head -n 1)
  echo "bundle: $dynamic"
  # shellcheck disable=SC2086
  # -k 45: a stopped tune stops its tritonserver first (Triton waits up to 20 s for in-flight work).
  timeout -k 45 "${TUNE_LIMIT:-330}" python3 -m pipeline.serve tune "$dynamic" --p99-ms "${P99_MS:-10}" \
    --outputs pooler_output --out /tmp/tune ${TUNE_ARGS:-} >"$OUT/tune.txt" 2>"$OUT/tune-progress.txt" || status=1
  cat "$OUT/tune.txt"; tail -n 5 "$OUT/tune-progress.txt"
  cp /tmp/tune/results.json /tmp/tune/tune.png /tmp/tune/tritonserver.log "$OUT/" 2>/dev/null
  if [ -d /tmp/tune/model_repository ]; then
    python3 -m pipeline.serve /tmp/tune/model_repository --port 0 >/tmp/winner.txt 2>"$OUT/winner-server.log" &
    server=$!
    for _ in $(seq 240); do grep -q "^ready:" /tmp/winner.txt && break; sleep 0.5; done
    url=$(sed -n 's/^url: //p' /tmp/winner.txt)
    python3 -m pipeline.serve check "$url" "$dynamic" --timeout 120 >"$OUT/winner-check.txt" 2>&1 || status=1
    sed 's/^/winner repository: /' "$OUT/winner-check.txt"
    kill -TERM "$server"; wait "$server"
  fi
  exit "$status"
  ;;
esac
