#!/usr/bin/env bash
# Wheels of the serving client side for the GPU host (Python 3.12, no network): tritonclient with
# its HTTP (gevent, asyncio/aiohttp) and gRPC parts (config.pbtxt's protobuf schema), and the
# Prometheus parser. The host's numpy 2 is used; everything else comes from here (~21 MiB).
#   scripts/make-serve-client-wheels.sh .serve-client-wheelhouse      (git-ignored)
# They do not fit one device call beside .serve-wheelhouse: scripts/gpu-serve.sh PHASE=tune
# carries them in the call after PHASE=serve installed nvidia-pytriton.
set -euo pipefail
out=${1:-.serve-client-wheelhouse}; mkdir -p "$out"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$out" \
  "tritonclient[http,grpc]==2.73.0" "aiohttp==3.14.5" "prometheus-client==0.26.0"
rm -f "$out"/numpy-*.whl
du -sh "$out"
