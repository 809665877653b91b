#!/usr/bin/env bash
# On the GPU host, in the call AFTER the one that installed the TensorRT-RTX wheelhouse into
# /tmp/gpu-site (../shared/gpu-host/README.md, "More than 64 MiB for one run"), from the repository
# root with .quant-wheelhouse/ carried (../shared/gpu-host/make-quant-wheels.sh .quant-wheelhouse):
#   1. installs the ModelOpt wheels into /tmp/gpu-site and puts a stub `pulp` on sys.path (this run only:
#      ModelOpt imports pulp at load and never uses it for quantization);
#   2. builds bert and resnet50 in fp16, bf16 and fp8 with the bench stage (and tries bert int8 and
#      int8_weight_only), each with a time limit; a refusal is recorded with its one-line reason;
#   3. writes $OUT/precisions/report.md (python -m pipeline.report: the precisions side by side:
#      latency, idle memory, accuracy measure, bundle size, "not faster than fp16" flags) and
#      $OUT/precision-outcomes.md (what each build did). PYTEST=1 also runs tests/gpu/test_precisions.py;
#      EXTENDED=1 its BERT-base and ResNet-50 cases too (gpu_extended: bf16 and fp8 built, verified
#      or refused, and reloaded in a fresh process; a few minutes).
# MODELOPT_CUDA_EXT=off (default) keeps ModelOpt from compiling its CUDA extension with nvcc (minutes):
# its simulated quantization then runs on the PyTorch fallback.
set -uo pipefail
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
[ -d /tmp/gpu-site/torch_tensorrt ] || { echo "machine is new: install the wheelhouse first"; exit 3; }
export PYTHONPATH=/tmp/gpu-site LD_LIBRARY_PATH=/tmp/gpu-site/tensorrt_rtx_libs PYTHONUNBUFFERED=1
if [ ! -d /tmp/gpu-site/modelopt ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site .quant-wheelhouse/*.whl \
    >"$OUT/quant-install.txt" 2>&1 || { cat "$OUT/quant-install.txt"; exit 3; }
fi
stubs=$(mktemp -d)
mkdir -p "$stubs/pulp"
cat >"$stubs/pulp/__init__.py" <<'PY'
"""Test-run stub: ModelOpt imports pulp at load (and names pulp.LpVariable in annotations);
quantization never uses it."""


def __getattr__(name):
    return type(name, (), {})
PY
export PYTHONPATH="$stubs:.:/tmp/gpu-site"
[ "${MODELOPT_CUDA_EXT:-off}" = off ] && export CUDA_HOME=/nonexistent-cuda-home
python3 -c "import modelopt.torch.quantization as mtq, torch_tensorrt; print('modelopt', mtq.__name__, 'ok; torch_tensorrt', torch_tensorrt.__version__)" 2>&1 | tail -n 1
art="$OUT/precisions"
outcomes="$OUT/precision-outcomes.md"
printf '| model | precision | outcome | seconds |\n|---|---|---|---|\n' >"$outcomes"
stages='stages=[build,compile,serialize,reload,verify,bench,package]'
build() {  # model precision
  local start log status line
  start=$(date +%s); log="$art/logs/$1-$2.log"; mkdir -p "$art/logs"
  # A fresh extensions folder per build: a build killed while ModelOpt tried its CUDA extension
  # leaves torch's build lock behind, and the next build would wait on it forever (seen on the H200).
  TORCH_EXTENSIONS_DIR=$(mktemp -d) timeout -k 5 "${BUILD_LIMIT:-150}" python3 -m pipeline model="$1" precision="$2" runtime=preallocated "$stages" \
    bench.baselines=[] bench.warmup=20 bench.iterations=100 bench.rounds=2 calibration.samples=32 \
    artifacts_dir="$art" hydra.run.dir="$art/runs/$1-$2" >"$log" 2>&1
  status=$?
  if [ $status = 0 ]; then
    line="built: $(grep -o 'verification: .*' "$log" | tail -n 1 | cut -c15-)"
  elif [ $status = 124 ] || [ $status = 137 ]; then
    line="timed out after ${BUILD_LIMIT:-150} s"
  else
    line="refused: $(grep -E '^(error|verification failed)|error:' "$log" | head -n 1 | tr '|' '/')"
  fi
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$line" "$(( $(date +%s) - start ))" | tee -a "$outcomes"
}
# CASES="model:precision ..." picks the builds (default: all of them).
for case in ${CASES:-bert:fp16 bert:bf16 bert:fp8 resnet50:fp16 resnet50:bf16 resnet50:fp8 bert:int8 bert:int8_weight_only}; do
  build "${case%%:*}" "${case##*:}"
done
python3 -m pipeline.report "$art" >"$OUT/precision-report.txt" 2>&1 || tail -n 5 "$OUT/precision-report.txt"
sed -n '/# Precisions side by side/,$p' "$art/report.md" 2>/dev/null | head -n 20
if [ "${PYTEST:-0}" = 1 ]; then
  marks="gpu and not gpu_extended"; [ "${EXTENDED:-0}" = 1 ] && marks="gpu"
  GPU_PRECISION_REPORT="$OUT/precision-tests.json" timeout -k 5 "${PYTEST_LIMIT:-240}" \
    python3 -m pytest -m "$marks" tests/gpu/test_precisions.py -v -p no:cacheprovider -s \
    >"$OUT/test-precisions.log" 2>&1
  echo "tests/gpu/test_precisions.py: rc $?"; grep -E "passed|failed|^(FAILED|ERROR)" "$OUT/test-precisions.log" | tail -n 8
fi
rm -rf "$stubs"
