#!/usr/bin/env bash
# Installs the package as users do, outside the checkout, and uses it from another directory:
#   1. a wheel built from the checkout, installed non-editable into a fresh virtual environment
#      with its base dependencies only (a deployment host: no hydra, omegaconf, matplotlib,
#      transformers, torchvision), loads a packed bundle with a policy given by name, calls it and
#      passes its golden check;
#   2. the same wheel with the build extra runs `python -m pipeline model=tiny_cnn`.
# Usage: scripts/check-install.sh [PYTHON]   (default: .venv/bin/python, which builds the bundle)
set -euo pipefail
cd "$(dirname "$0")/.."
dev_python=${1:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
versions() { "$dev_python" -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in '$*'.split()))"; }

echo "== a bundle to ship (built in the development environment)"
bundle=$("$dev_python" -m pipeline model=tiny_cnn "artifacts_dir=$work/build" "hydra.run.dir=$work/run" \
  | sed -n 's/^bundle: //p' | tail -n 1)
mkdir -p "$work/ship"
"$dev_python" -m pipeline.bundle pack "$bundle" -o "$work/ship/tiny_cnn.tar" >/dev/null

echo "== the wheel, installed non-editable with its base dependencies"
"$dev_python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . 2>/dev/null
wheel=$(ls "$work"/dist/*.whl)
"$dev_python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q $(versions torch) "$wheel"

cd "$work/ship"
"$work/venv/bin/python" - <<'PY'
import importlib.util
import sys

absent = ["hydra", "omegaconf", "matplotlib", "transformers", "torchvision", "rich"]
present = [name for name in absent if importlib.util.find_spec(name) is not None]
assert not present, f"a deployment install must not need {present}"
import pipeline.runtime
from pipeline.runtime import load_bundle, verify_loaded

assert "site-packages" in pipeline.runtime.__file__, pipeline.runtime.__file__
with load_bundle("tiny_cnn.tar", runtime="standard") as model:
    report = verify_loaded(model)
    assert report.passed, report.summary()
    model.set_runtime("preallocated")  # a policy by name, without Hydra
    print(f"deployment install: loaded {model.manifest.model_name} on {model.device}, golden check passed,"
          f" policy {model.policy.name}")
build_side = [m for m in sys.modules if m.split(".")[0] in absent]
assert not build_side, build_side
PY
if "$work/venv/bin/python" -m pipeline model=tiny_cnn 2>"$work/err.txt"; then
  echo "python -m pipeline must refuse without the build extra"; exit 1
fi
grep -q "needs the build extra" "$work/err.txt" || { cat "$work/err.txt"; exit 1; }
echo "deployment install: python -m pipeline says the build extra is needed"

echo "== the same wheel with the build extra"
"$work/venv/bin/python" -m pip install -q $(versions torch torchvision) "$wheel[build]"
cd "$work"
"$work/venv/bin/python" -m pipeline model=tiny_cnn "artifacts_dir=$work/artifacts" | tail -n 3
ls "$work"/artifacts/bundles/tiny_cnn-* >/dev/null
echo "full install: python -m pipeline model=tiny_cnn ran from $work"
