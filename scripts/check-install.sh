#!/usr/bin/env bash
# Installs the package as users do, outside the checkout, and uses it from another directory:
#   1. a wheel built from the checkout, installed non-editable into a fresh virtual environment
#      with its base dependencies only (a deployment host: no hydra, omegaconf, matplotlib,
#      transformers, torchvision), loads a packed bundle with a policy given by name, calls it and
#      passes its golden check; every deployment-side command runs there (bundle verify, inspect,
#      bench, coldstart, keygen, sign, warm; serve export-triton, and serve itself, which asks for
#      the serve extra in one line);
#   2. the same wheel with the serve extra serves the bundle with tritonserver and checks it;
#   3. the same wheel with the build extra runs `python -m pipeline model=tiny_cnn`.
# Usage: scripts/check-install.sh [PYTHON]   (default: .venv/bin/python, which builds the bundle)
set -euo pipefail
cd "$(dirname "$0")/.."
dev_python=${1:-.venv/bin/python}
if [[ $dev_python == */* && $dev_python != /* ]]; then dev_python=$PWD/$dev_python; fi  # the script changes directory
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

absent = ["hydra", "omegaconf", "matplotlib", "transformers", "torchvision"]
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

# Each deployment-side command, as a deployment host runs it: exit code, and never a traceback.
deploy() {  # deploy EXPECTED_RC COMMAND...
  local expected=$1 rc=0; shift
  "$work/venv/bin/python" -m "$@" >"$work/out.txt" 2>"$work/err.txt" || rc=$?
  if [ "$rc" != "$expected" ] || grep -q "Traceback" "$work/err.txt"; then
    echo "deployment install: python -m $* exited $rc (expected $expected)"; cat "$work/out.txt" "$work/err.txt"; exit 1
  fi
  echo "deployment install: python -m $* -> exit $rc"
}
deploy 0 pipeline.bundle verify tiny_cnn.tar
deploy 0 pipeline.bundle inspect tiny_cnn.tar
deploy 0 pipeline.bundle bench tiny_cnn.tar --iterations 5 --warmup 1 --warmup-seconds 0
deploy 0 pipeline.bundle coldstart tiny_cnn.tar --repeats 1
deploy 0 pipeline.bundle keygen signer.pem signer.pub.pem
deploy 0 pipeline.bundle sign tiny_cnn.tar --key signer.pem
PIPELINE_TRUSTED_KEYS=signer.pub.pem PIPELINE_REQUIRE_SIGNATURE=1 deploy 0 pipeline.bundle verify tiny_cnn.tar
grep -q "signature: signed, verified with signer.pub.pem" "$work/out.txt" || { cat "$work/out.txt"; exit 1; }
deploy 1 pipeline.bundle warm tiny_cnn.tar   # an export bundle has no engines to warm: one line
grep -q "not a TensorRT bundle" "$work/err.txt" || { cat "$work/err.txt"; exit 1; }
# Triton's server, client and config schema come with the serve extra: each asks for it in one line.
for command in "tiny_cnn.tar --port 0" "export-triton tiny_cnn.tar $work/repository" "check http://127.0.0.1:1 tiny_cnn.tar"; do
  # shellcheck disable=SC2086
  deploy 1 pipeline.serve $command
  grep -q "pip install 'trt-pipeline\[serve\]'" "$work/err.txt" || { cat "$work/err.txt"; exit 1; }
done

echo "== the same wheel with the serve extra: tritonserver serves the bundle"
"$work/venv/bin/python" -m pip install -q $(versions torch) "$wheel[serve]"
deploy 0 pipeline.serve export-triton tiny_cnn.tar "$work/repository"
"$work/venv/bin/python" -m pipeline.serve tiny_cnn.tar --port 0 >"$work/serve.txt" 2>"$work/serve-err.txt" &
server=$!
for _ in $(seq 120); do grep -q "^ready:" "$work/serve.txt" && break; sleep 0.5; done
url=$(sed -n 's/^url: //p' "$work/serve.txt")
[ -n "$url" ] || { kill "$server"; cat "$work/serve.txt" "$work/serve-err.txt"; exit 1; }
deploy 0 pipeline.serve check "$url" tiny_cnn.tar
kill -TERM "$server"
wait "$server" || { echo "serve exited $? after SIGTERM"; cat "$work/serve-err.txt"; exit 1; }
echo "deployment install: served $url, golden sets answered, stopped cleanly on SIGTERM"

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
