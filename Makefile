.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install system-deps data demo test test-fast lint format status image bench bench-gate act-push act-rollback clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/serve.txt requirements/train.txt requirements/dev.txt requirements/spark.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,spark]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned dependencies

data: $(STAMP) ## generate the default churn data set (data/churn.csv)
	$(BIN)/python -m pipeline make-data

demo: $(STAMP) data ## run the whole gated flow on the embedded MLflow (sqlite) and show the registry
	$(BIN)/python -m pipeline run
	$(BIN)/python -m pipeline status

status: $(STAMP) ## show versions, aliases and the alias history
	$(BIN)/python -m pipeline status

# podman (the container engine where no Docker engine runs), debootstrap (an
# offline base image), docker-registry (the OCI registry the act test publishes
# to), wrk (benchmarks) and PostgreSQL (the team tracking server's store in the
# tests). Installed with apt when missing.
SYSTEM_PACKAGES := podman buildah runc fuse-overlayfs uidmap slirp4netns debootstrap wrk postgresql docker-registry
system-deps: ## install podman, debootstrap, docker-registry, wrk and postgresql with apt when missing (root)
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing system packages: $$missing (install them with apt as root)"; exit 2; fi; \
	echo "installing $$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

test: $(STAMP) system-deps ## run the whole test suite (unit, integration, API, and act end-to-end with a real image)
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## the tests that need no container engine or act
	$(BIN)/python -m pytest -m "not e2e"

image: $(STAMP) system-deps ## build the API image (docker, else podman)
	$(BIN)/python -m pipeline image

bench-gate: $(STAMP) ## what the gate's paired bootstrap costs and resolves on the default data
	$(BIN)/python benchmarks/gate_bootstrap.py

bench: $(STAMP) system-deps ## the API vs a no-op FastAPI app and `mlflow models serve`; score vs `mlflow models predict` (after make demo)
	$(BIN)/python benchmarks/serve_vs_mlflow.py
	$(BIN)/python benchmarks/score_vs_mlflow_predict.py

act-push: $(STAMP) system-deps ## the deploy workflow through act (MLFLOW_TRACKING_URI=http://... for a real server)
	PATH=$(CURDIR)/$(BIN):$$PATH act push $${MLFLOW_TRACKING_URI:+-s MLFLOW_TRACKING_URI=$$MLFLOW_TRACKING_URI}

act-rollback: $(STAMP) ## the rollback workflow through act: make act-rollback REASON="..." [VERSION=3]
	PATH=$(CURDIR)/$(BIN):$$PATH act workflow_dispatch -W .github/workflows/rollback.yml \
		--input reason="$(REASON)" --input version="$(VERSION)" -s MLFLOW_TRACKING_URI=$$MLFLOW_TRACKING_URI

lint: $(STAMP) ## ruff (lint, docstrings, annotations, format) and mypy (strict on gates/ and api/release/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove local MLflow state, data, reports and build files (keeps .venv)
	rm -rf mlflow.db mlartifacts mlruns data reports build
