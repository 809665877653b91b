#!/usr/bin/env bash
# On the GPU host: does a newer TensorRT-RTX release build BERT's SDPA attention, and is its engine
# faster? torch-tensorrt-rtx 2.11 does not import with TensorRT-RTX >= 1.5: it names
# trt.IAlgorithmSelector in a type annotation, and 1.5 removed that class. This probe stubs the
# name (nothing calls it unless an algorithm selector is passed) to try the release anyway.
#   TRT_RTX=1.5.0.114 ../shared/gpu-host/make-wheelhouse.sh .gpu-wheelhouse-1.5 hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
#   scripts/probe/rtx_release_probe.sh .gpu-wheelhouse-1.5      # on the GPU host; writes under $OUT
set -uo pipefail
wheelhouse=${1:?wheelhouse folder}
OUT=${OUT:-artifacts/probe}
mkdir -p "$OUT"
export GPU_SITE=/tmp/gpu-site-probe PYTHONUNBUFFERED=1
# shellcheck disable=SC1090,SC1091
source "$wheelhouse/install.sh" "$wheelhouse" >"$OUT/install.log" 2>&1
grep -q IAlgorithmSelector "$OUT/install.log" && echo "stock import fails: $(grep -m1 AttributeError "$OUT/install.log")"
echo 'if "IAlgorithmSelector" not in globals():  # removed in TensorRT-RTX 1.5; 2.11 only annotates with it
    class IAlgorithmSelector: ...' >>"$GPU_SITE/tensorrt_rtx/__init__.py"
python3 -c "import torch, torch_tensorrt, tensorrt; print('with the stub: torch_tensorrt', torch_tensorrt.__version__, '| TensorRT-RTX', tensorrt.__version__)" || exit 1
quiet() { grep -vE "WARNING|modelopt|createInfer|TRT-LLM|INFO"; }
stages='stages=[build,compile,serialize,reload,verify,bench,package]'
for attention in eager sdpa; do
  echo "--- BERT fp16, attn_implementation=$attention"
  python3 -m pipeline model=bert precision=fp16 runtime=cudagraphs "$stages" 'bench.baselines=[fresh]' \
    model.architecture.attn_implementation=$attention artifacts_dir=/tmp/probe-$attention 2>&1 | quiet \
    | tee "$OUT/bert-$attention.log" | grep -E "latency|load /|verif|failed|rror|hint" | head -12
done
