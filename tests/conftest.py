"""Shared fixtures: a throwaway project directory with its own sqlite MLflow."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.core.churn_data import generate_churn

ROOT = Path(__file__).resolve().parents[1]

# With pytest-xdist (`make test`: -n 3 --dist loadfile --no-loadscope-reorder), a test file is one unit of work on
# one worker, so its module fixtures (a tracking server, a fleet of replicas, the act run) start once; the units are
# handed out in collection order, which on a worker is this: the longest files first (as measured, several minutes
# down to about one), so that the many short ones fill in at the end on whichever worker is free. test_flow, early,
# also builds the released-version snapshots most integration files copy (tests/integration/released.py, candidate.py).
LONG_FIRST = [
    "tests/e2e/test_workflows_act.py",
    "tests/integration/test_flow.py",
    "tests/integration/test_rollout_live.py",
    "tests/integration/test_families_flow.py",
    "tests/integration/test_team_server.py",
    "tests/integration/test_crafted_release.py",
    "tests/integration/test_integrity.py",
    "tests/integration/test_api_live.py",
    "tests/integration/test_release_lock_live.py",
    "tests/integration/test_feature_store.py",
    "tests/integration/test_feature_training.py",
    "tests/api/test_feature_lookup.py",
    "tests/e2e/test_retrain_act.py",
    "tests/integration/test_outcomes_quality.py",
    "tests/unit/test_live_quality.py",
    "tests/api/test_prediction_log.py",
    "tests/unit/test_model_checks.py",
    "tests/integration/test_batch_scoring.py",
    "tests/integration/test_monitoring_live.py",
    "tests/integration/test_gate_reports.py",
    "tests/integration/test_production_deploy.py",
    "tests/integration/test_release_ledger.py",
]


def pytest_collection_modifyitems(config, items) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker; a plain run keeps the collection order
        rank = {path: i for i, path in enumerate(LONG_FIRST)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep order


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory) -> Path:
    """One cache of probe verdicts for the session, never the user's: the same bytes are probed once.

    Under pytest-xdist the workers of a run share it (pytest-N/probe-cache): a verdict is a file named by its key.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        directory = tmp_path_factory.getbasetemp().parent / "probe-cache"
        directory.mkdir(exist_ok=True)
    else:
        directory = tmp_path_factory.mktemp("probe-cache")
    os.environ["PROBE_CACHE_DIR"] = str(directory)  # processes the tests start inherit it
    return directory


@pytest.fixture(scope="session")
def churn_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "churn.csv"
    generate_churn(7043, 42).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An initialised MLflow sqlite database; creating one costs seconds, copying it does not."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def project(tmp_path, monkeypatch, churn_csv, empty_mlflow_db) -> Path:
    """A working directory like a fresh clone after `make data`, with its own registry."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    shutil.copy(churn_csv, tmp_path / "data" / "churn.csv")
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_SHA", "GITHUB_ACTOR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class Cli:
    """Calls `python -m pipeline` in-process and keeps what it printed."""

    def __init__(self, capsys):
        self.capsys = capsys
        self.out = self.err = ""

    def __call__(self, *args: str) -> int:
        code = main(list(args))
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return code

    def status(self) -> dict:
        assert self("status", "--json") == 0, self.err
        return json.loads(self.out)

    def status_of(self, model_name: str) -> dict:
        assert self("status", "--json", "--set", f"registry.model_name={model_name}") == 0, self.err
        return json.loads(self.out)


@pytest.fixture
def cli(capsys) -> Cli:
    return Cli(capsys)
