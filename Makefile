.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help feast install system-deps data demo demo-features test test-fast test-deploy lint format status image bench bench-gate walks act-push act-rollback clean

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

# The same flow through the Feast feature store (README: Feature store): its own target, since Feast's own
# environment and its start-up on every call (about 45 s in all) would nearly triple the default flow.
demo-features: $(STAMP) $(FEAST) data ## the whole gated flow trained from the feature store (Feast, SQLite online store)
	$(BIN)/python -m pipeline features build
	$(BIN)/python -m pipeline features apply
	$(BIN)/python -m pipeline features materialize
	$(BIN)/python -m pipeline run --set feature_store.service=churn_model
	$(BIN)/python -m pipeline status

status: $(STAMP) ## show versions, aliases and the alias history
	$(BIN)/python -m pipeline status

# podman (the container engine where no Docker engine runs; catatonit for the pause image kube play builds), debootstrap (an
# offline base image), docker-registry (the OCI registry the act test publishes
# to), wrk (benchmarks), PostgreSQL (the team tracking server's store in the
# tests), Prometheus with promtool and Alertmanager with amtool (deploy/'s rules,
# alerts and dashboard queries, checked for real), Java 17 (Spark's local mode, for score --engine spark).
# Installed with apt when missing.
SYSTEM_PACKAGES := podman catatonit buildah runc fuse-overlayfs uidmap slirp4netns debootstrap wrk postgresql docker-registry \
	prometheus prometheus-alertmanager openjdk-17-jre-headless redis-server
system-deps: ## install podman, debootstrap, docker-registry, wrk and postgresql with apt when missing (root or sudo)
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo=sudo; \
	else echo "missing system packages: $$missing (install them with apt as root)"; exit 2; fi; \
	echo "installing $$missing"; \
	$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

# checkov pins a boto3 that clashes with the project's: it gets a virtualenv of its own.
CHECKOV := build/checkov-venv/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv build/checkov-venv
	build/checkov-venv/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30

# Feast pins pandas 2 and an older prometheus-client than the project's: it gets a virtualenv of its own too
# (requirements/feast.txt); the pipeline runs its jobs there (featurestore/job.py).
FEAST := build/feast-venv/.installed
$(FEAST): requirements/feast.txt
	test -x build/feast-venv/bin/python || $(PYTHON) -m venv build/feast-venv
	build/feast-venv/bin/pip install --quiet --disable-pip-version-check -r requirements/feast.txt
	touch $(FEAST)

feast: $(FEAST) ## the feature store's own environment (build/feast-venv)

# pytest-xdist workers, one test file per unit of work (its module fixtures start once), the longest files handed
# out first (tests/conftest.py): most of the suite waits on subprocesses and servers, so workers overlap the waits.
PYTEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP) system-deps $(CHECKOV) $(FEAST) ## run the whole test suite (unit, integration, API, and act end-to-end with a real image)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: $(STAMP) system-deps $(CHECKOV) $(FEAST) ## the tests that need no container engine or act
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_PARALLEL)

test-deploy: $(STAMP) system-deps $(CHECKOV) ## offline checks of deploy/: k8s, compose, rules, alerts, dashboard
	$(BIN)/python -m pytest tests/deploy

image: $(STAMP) system-deps ## build the API image (docker, else podman)
	$(BIN)/python -m pipeline image

bench-gate: $(STAMP) ## what the gate's paired bootstrap costs and resolves on the default data
	$(BIN)/python benchmarks/gate_bootstrap.py

walks: $(STAMP) ## the files the gate and promote stages walk through (entered, transitions, returns)
	$(BIN)/python benchmarks/walks.py

bench: $(STAMP) system-deps $(FEAST) ## the API vs a raw ASGI app, a no-op FastAPI app and `mlflow models serve`; score vs `mlflow models predict` (after make demo); the live decisions simulated; every model family; lookups by customer id; the prediction log, live counting, decode and predict, each on and off
	$(BIN)/python benchmarks/serve_vs_mlflow.py
	$(BIN)/python benchmarks/score_vs_mlflow_predict.py
	$(BIN)/python benchmarks/shadow_cost.py
	$(BIN)/python benchmarks/live_decisions.py
	$(BIN)/python benchmarks/family_speed.py
	$(BIN)/python benchmarks/feature_lookup.py
	$(BIN)/python benchmarks/prediction_log.py
	$(BIN)/python benchmarks/live_counting.py --wrk
	$(BIN)/python benchmarks/decode_predict.py

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
