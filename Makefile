# The front door: `make demo` runs the whole pipeline on local processes, `make test` proves it.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTEST_ARGS ?=
PYTEST_PATHS ?= tests

# The Makefile brings its own uv (pinned) so that a bare machine needs nothing but python3:
# a venv under the cache holds it, and every recipe finds it (and uvx) first on PATH.
UV_VERSION := 0.13.9
RECO_CACHE_DIR ?= $(HOME)/.cache/reco
RECO_TOOLS_DIR ?= $(RECO_CACHE_DIR)/tools
UV_HOME := $(RECO_TOOLS_DIR)/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
export PATH := $(UV_HOME)/bin:$(PATH)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: bootstrap install
bootstrap: $(UV) ## Install the pinned uv into the cache (needs only python3 and PyPI)

$(UV):
	scripts/bootstrap-uv.sh $(UV_VERSION) $(UV_HOME)

install: $(UV) ## Install the Python workspace from the lock (uv)
	$(UV) sync --locked --all-packages

.PHONY: stack-up stack-down stack-status
stack-up: ## Start Kafka, Redis and the S3 server as local processes (idempotent)
	scripts/stack.sh up
stack-down: ## Stop the dev stack
	scripts/stack.sh down
stack-status: ## Show the dev stack's processes
	scripts/stack.sh status

.PHONY: cluster-up cluster-down
cluster-up: ## Start the opt-in Redis Cluster (3 primaries + 3 replicas on 127.0.0.1:7000-7005)
	scripts/stack.sh cluster-up
cluster-down: ## Stop the Redis Cluster
	scripts/stack.sh cluster-down

.PHONY: kube-up kube-down kube-status
kube-up: ## Start the local Kubernetes control plane (etcd, apiserver, kwok), building it once
	scripts/kube.sh up
kube-down: ## Stop the local Kubernetes control plane
	scripts/kube.sh down
kube-status: ## Show the control plane's processes
	scripts/kube.sh status

.PHONY: node-up node-down node-status test-node
node-up: kube-up images ## Start a real node (containerd + kubelet) for the control plane, building it once
	scripts/node.sh up
node-down: ## Stop the real node and its pods
	scripts/node.sh down
node-status: ## Show the real node's processes
	scripts/node.sh status
test-node: install node-up ## The node tier only: our images as real pods on the real node
	$(UV) run pytest tests/node $(PYTEST_ARGS)

.PHONY: docker-up docker-down docker-status images test-containers
docker-up: ## Start the local Docker engine on its own socket (installs it and Compose once)
	scripts/docker.sh up
docker-down: ## Stop the local Docker engine
	scripts/docker.sh down
docker-status: ## Show the local Docker engine
	scripts/docker.sh status
images: docker-up ## Build every image without a registry (local base substitutes + the 4 services)
	scripts/docker.sh images
test-containers: install images ## The container tier only: docker compose up, for real
	$(UV) run pytest tests/containers $(PYTEST_ARGS)

.PHONY: lint
lint: install ## Lint, format check, import contracts and type check
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run lint-imports
	$(UV) run mypy libs/common/src services/trainer/src services/controller/src services/worker/src services/api/src tools/devkit/src

.PHONY: test-unit
test-unit: install ## Unit tests only (no network)
	$(UV) run pytest tests/unit $(PYTEST_ARGS)

.PHONY: test
test: lint stack-up kube-up images ## Lint, type check and every test tier against the real servers (and images)
	$(UV) run pytest $(PYTEST_PATHS) $(PYTEST_ARGS)

.PHONY: demo
demo: install stack-up ## The whole loop on local processes: train, roll out, stream, serve
	$(UV) run python -m reco_devkit.demo $(DEMO_ARGS)

.PHONY: bench
bench: install stack-up ## Run every benchmark under bench/ and rewrite docs/benchmarks.md
	$(UV) run python bench/run_all.py $(BENCH_ARGS)

.PHONY: clean
clean: ## Stop everything and remove local state (.stack, var)
	-scripts/stack.sh down
	-scripts/node.sh down
	-scripts/kube.sh down
	-scripts/docker.sh down
	rm -rf .stack var
