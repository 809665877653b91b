# make help lists the targets. Targets create .venv on first use (Python >= 3.11).
SHELL := bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= bert
RUNTIME ?= standard
PRECISION ?= fp32
ARGS ?=
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run bundle serve tune test test-serve-ray test-gpu test-gpu-full test-install reliability bench bench-bert bench-resnet bench-sweep bench-precisions bench-refit report lint typecheck docs check clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "  overrides: MODEL=$(MODEL) RUNTIME=$(RUNTIME) PRECISION=$(PRECISION) ARGS='...' ARTIFACTS=$(ARTIFACTS)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -q -e '.[build,dev,sweep,serve,quant]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the package with its build, dev, sweep, serve and quant tools

run: $(STAMP) ## run the pipeline: make run MODEL=bert RUNTIME=preallocated ARGS="precision=fp16"
	$(PY) -m pipeline model=$(MODEL) runtime=$(RUNTIME) precision=$(PRECISION) $(ARGS)

bundle: $(STAMP) ## build a bundle and pack it as .tar: make bundle MODEL=bert RUNTIME=preallocated
	@set -o pipefail; path=$$($(PY) -m pipeline model=$(MODEL) runtime=$(RUNTIME) precision=$(PRECISION) $(ARGS) | sed -n 's/^bundle: //p' | tail -n 1); \
	test -n "$$path" && $(PY) -m pipeline.bundle pack "$$path"

# PIPELINE_SERVE_TESTS=require: the Triton tests fail, not skip, if tritonserver is missing.
test: $(STAMP) ## test suite (CI runs it with make reliability); GPU tests skip themselves without a GPU
	PIPELINE_SERVE_TESTS=require $(PY) -m pytest -q -m "not reliability and not ray"

# Ray Serve is heavy (~1.4 GB running, ~20-40 s to start 2 replicas): its own extra and target.
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[build,dev,sweep,serve,quant,ray]'
	touch $(RAY_STAMP)

test-serve-ray: $(RAY_STAMP) ## Ray Serve: golden round trip, bad inputs, SIGTERM on a local Ray instance (CI runs it)
	$(PY) -m pytest -q -m ray tests/serve

BUNDLE ?=
PORT ?= 8000
serve: $(STAMP) ## serve a bundle with tritonserver over KServe v2 HTTP: make serve BUNDLE=path [PORT=8000]
	$(PY) -m pipeline.serve $(BUNDLE) --port $(PORT) $(ARGS)

P99_MS ?= 10
tune: $(STAMP) ## the serving configuration with most throughput at p99 <= P99_MS: make tune BUNDLE=path [P99_MS=10] [ARGS=...]
	$(PY) -m pipeline.serve tune $(BUNDLE) --p99-ms $(P99_MS) $(ARGS)

test-install: $(STAMP) ## a wheel installed as users do (deployment-only, then with the build extra), used from another directory
	scripts/check-install.sh $(PY)

reliability: $(STAMP) ## tampering, unpacking, signatures, kill -9, concurrency, compatibility, fuzzing: a table of counts
	$(PY) -m pytest -q -p no:logging tests/reliability

# The GPU host has no network: it runs with its own python3 plus the wheelhouse (docs/gpu-host.md).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
test-gpu: ## GPU suite (<= 5 min on an H200): needs a CUDA GPU and torch_tensorrt (docs/gpu-host.md)
	$(GPU_PY) -m pytest -m "gpu and not gpu_extended" tests/gpu -v -p no:cacheprovider --durations=12

test-gpu-full: ## the GPU suite plus the tests that document settled facts (SDPA on Hopper, format 1 vs 2)
	$(GPU_PY) -m pytest -m gpu tests/gpu -v -p no:cacheprovider --durations=12

BENCH_STAGES := stages=[build,compile,serialize,reload,verify,bench,package]
# The second seed's scenario (ResNet-152 x100); BENCH_RESNET=resnet50 is the quick variant (x64).
BENCH_RESNET ?= resnet152
ARTIFACTS ?= artifacts
# One scenario at a time even under make -j: they share the GPU.
.NOTPARALLEL: bench
bench: bench-bert bench-resnet ## GPU: the two seed scenarios (BERT fp16 1x128 policies; ResNet-152 x100 standard vs dynamic), cold starts with and without the runtime cache, report
	$(GPU_PY) -m pipeline.report $(ARTIFACTS)

# Process start to first output, with the bundle's runtime cache and without it (what a miss costs).
define coldstarts
	for bundle in $(1); do \
		$(GPU_PY) -m pipeline.bundle coldstart $$bundle --json $(ARTIFACTS)/coldstart/$$(basename $$bundle).json || exit 1; \
		$(GPU_PY) -m pipeline.bundle coldstart $$bundle --runtime-cache off \
			--json $(ARTIFACTS)/coldstart/$$(basename $$bundle)-cache-off.json || exit 1; \
	done
endef

bench-bert: ## GPU: the first seed's scenario alone (BERT fp16 1x128 under three policies) and its cold starts
	$(GPU_PY) -m pipeline model=bert precision=fp16 runtime=preallocated $(BENCH_STAGES) \
		bench.policies=[standard,preallocated,cudagraphs] artifacts_dir=$(ARTIFACTS) $(ARGS)
	$(call coldstarts,$(ARTIFACTS)/bundles/bert-fp16-preallocated-*)

bench-resnet: ## GPU: the second seed's scenario alone (BENCH_RESNET standard vs dynamic) and its cold starts
	$(GPU_PY) -m pipeline model=$(BENCH_RESNET) runtime=standard $(BENCH_STAGES) artifacts_dir=$(ARTIFACTS) $(ARGS)
	$(GPU_PY) -m pipeline model=$(BENCH_RESNET) runtime=dynamic $(BENCH_STAGES) bench.baselines=[fresh] \
		artifacts_dir=$(ARTIFACTS) $(ARGS)
	$(call coldstarts,$(ARTIFACTS)/bundles/$(BENCH_RESNET)-fp32-standard-*)

# Compile settings that change TensorRT's kernels, swept over BERT fp16 with Hydra multirun; every
# bundle is benchmarked and the report marks the fastest per policy with the command that rebuilds it.
SWEEP ?= compile.optimization_level=3,5 compile.tiling_optimization_level=none,full
bench-sweep: ## GPU: BERT fp16 built for each SWEEP combination, all benchmarked; report marks the fastest
	$(GPU_PY) -m pipeline -m model=bert precision=fp16 runtime=cudagraphs $(BENCH_STAGES) \
		bench.baselines=[fresh] bench.policies=[preallocated] $(SWEEP) \
		artifacts_dir=$(ARTIFACTS)/sweep hydra.sweep.dir=$(ARTIFACTS)/sweep/multirun $(ARGS)
	$(GPU_PY) -m pipeline.report $(ARTIFACTS)/sweep

# Precision as a dimension: BERT and ResNet-50 built and benchmarked in each of PRECISIONS; the report
# sets them side by side and flags a quantized engine that is not faster than fp16.
PRECISIONS ?= fp16,bf16,fp8
bench-precisions: ## GPU: BERT and ResNet-50 in each of PRECISIONS (needs the quant extra), side by side in the report
	for model in bert resnet50; do \
		$(GPU_PY) -m pipeline -m model=$$model precision=$(PRECISIONS) runtime=preallocated $(BENCH_STAGES) \
			bench.baselines=[fresh] artifacts_dir=$(ARTIFACTS)/precisions \
			hydra.sweep.dir=$(ARTIFACTS)/precisions/multirun-$$model $(ARGS) || exit 1; \
	done
	$(GPU_PY) -m pipeline.report $(ARTIFACTS)/precisions

REFIT_MODEL ?= bert
REFIT_PRECISION ?= fp16
bench-refit: ## GPU: refit vs full rebuild of REFIT_MODEL (default bert fp16), side by side
	$(GPU_PY) scripts/refit_bench.py --model $(REFIT_MODEL) --precision $(REFIT_PRECISION) \
		--artifacts $(ARTIFACTS)/refit-bench $(if $(REFIT_JSON),--json $(REFIT_JSON))

report: $(STAMP) ## markdown table + PNG comparing policies across benchmarked bundles in ARTIFACTS
	$(PY) -m pipeline.report $(ARTIFACTS)

lint: $(STAMP) ## ruff lint and format check
	$(PY) -m ruff check pipeline tests scripts
	$(PY) -m ruff format --check pipeline tests scripts

typecheck: $(STAMP) ## mypy on pipeline/
	$(PY) -m mypy

docs: $(STAMP) ## build the documentation site (strict: broken links fail)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

check: lint typecheck test ## lint + typecheck + tests

clean: ## remove artifacts (keeps artifacts/README.md), caches and .venv
	find artifacts -mindepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
