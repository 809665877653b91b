#!/usr/bin/env bash
# Wheels for serving on the GPU host (Python 3.12, no network): nvidia-pytriton (its tritonserver,
# Python backend and the 3.12 backend stub) and numpy < 2, which the backend stub needs.
#   scripts/make-serve-wheels.sh .serve-wheelhouse      (~45 MiB; git-ignored)
# The pytriton wheel is 55 MB as published: with the TensorRT-RTX wheelhouse it cannot travel in one
# device call, and with numpy not even alone beside the repository. It is repacked (LZMA) without
# the backend stubs of other Python versions and the libpython 3.13 bundled for one of them.
# On the GPU host, in a call after the TensorRT-RTX wheelhouse went to /tmp/gpu-site:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/serve-site .serve-wheelhouse/*.whl
set -euo pipefail
out=${1:-.serve-wheelhouse}; mkdir -p "$out"; out=$(cd "$out" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi none --platform manylinux_2_35_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$tmp" nvidia-pytriton==0.7.0 numpy==1.26.4
python3 - "$tmp" "$out" <<'PY'
import lzma, pathlib, re, struct, sys, zipfile

class StrongLZMA(zipfile.LZMACompressor):
    def _init(self):
        props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 26})
        self._comp = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=[lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)])
        return struct.pack("<BBH", 9, 4, len(props)) + props

zipfile.LZMACompressor = StrongLZMA
# Backend stubs of other Pythons, and the libpython 3.13 bundled for the 3.13 stub only.
drop = re.compile(r"pytriton/tritonserver/python_backend_stubs/3\.(?!12/)|nvidia_pytriton\.libs/libpython3-")
tmp, out = map(pathlib.Path, sys.argv[1:])
for whl in sorted(tmp.glob("*.whl")):
    dst = out / whl.name
    with zipfile.ZipFile(whl) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_LZMA) as zo:
        for info in zi.infolist():
            if drop.match(info.filename):
                continue
            data = zi.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(keepends=True) if not drop.match(l.decode()))
            zo.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
    print(f"{dst.name}: {whl.stat().st_size >> 10} -> {dst.stat().st_size >> 10} KiB")
PY
du -sh "$out"
