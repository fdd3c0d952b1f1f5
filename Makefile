.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install data demo test lint format status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/serve.txt requirements/train.txt requirements/dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned dependencies

data: $(STAMP) ## generate the default churn data set (data/churn.csv)
	$(BIN)/python -m pipeline make-data

demo: $(STAMP) data ## run the whole gated flow on the embedded MLflow (sqlite) and show the registry
	$(BIN)/python -m pipeline run
	$(BIN)/python -m pipeline status

status: $(STAMP) ## show versions, aliases and the alias history
	$(BIN)/python -m pipeline status

test: $(STAMP) ## run the test suite
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove local MLflow state, data and reports (keeps .venv)
	rm -rf mlflow.db mlartifacts mlruns data reports
