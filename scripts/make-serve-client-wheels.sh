#!/usr/bin/env bash
# Wheels of the serving client side for the GPU host (Python 3.12, no network): tritonclient with
# its HTTP (gevent, asyncio/aiohttp) and gRPC parts (config.pbtxt's protobuf schema), and the
# Prometheus parser, and what importing nvidia-pytriton needs (pyzmq, typing-inspect, wrapt: the
# repacked pytriton wheel of .serve-wheelhouse comes without its dependencies). The host's numpy 2
# is used; everything else comes from here (~23 MiB).
#   scripts/make-serve-client-wheels.sh .serve-client-wheelhouse      (git-ignored)
# With .serve-wheelhouse they fit one device call (docs/gpu-host.md): PHASE=serve, then PHASE=tune.
set -euo pipefail
out=${1:-.serve-client-wheelhouse}; mkdir -p "$out"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$out" \
  "tritonclient[http,grpc]==2.73.0" "aiohttp==3.14.5" "prometheus-client==0.26.0" \
  "pyzmq==27.3.0" "typing-inspect==0.9.0" "wrapt==2.5.2"
rm -f "$out"/numpy-*.whl
du -sh "$out"
