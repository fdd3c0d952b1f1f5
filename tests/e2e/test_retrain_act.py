"""The retrain workflow, run by act on this host against a real `mlflow server` and a real prediction log.

Production serves version 1; a week of its predictions is in the log (Parquet segments laid out as the API
writes them) and their outcomes come back through `python -m pipeline outcomes`. The relay's `retrain`
dispatch then runs retrain.yml, which runs deploy.yml's jobs: the training set is the base data plus the
labelled rows, the candidate trains on it and, not beating production at the gate, changes nothing and says
so. (A retrain that beats production goes on exactly as a push does: image, smoke, publish, rollout, promote,
which test_workflows_act.py runs once; that path costs an image build, so it is not run twice.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from api.log_layout import PREDICTION_SCHEMA, prediction_segment
from pipeline.runtime.tracking_server import tracking_server

from .test_workflows_act import MODEL, act, commit, git, registry

pytestmark = pytest.mark.e2e
RETRAIN = ".github/workflows/retrain.yml"
LOGGED = 700  # predictions of version 1 in the log, each given its outcome
HELD_OUT = 500  # the newest of them, held out of training for the gate's recent_outcomes rule (deploy.yml)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project's files (tracked and new, not ignored) in a fresh git repository on branch main."""
    from ..conftest import ROOT

    path = tmp_path_factory.mktemp("retrain-repo")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes((ROOT / name).read_bytes())
    git(path, "init", "-q", "-b", "main")
    commit(path, "snapshot of the project")
    return path


def pipeline(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"pipeline {' '.join(args)}: {done.stderr[-2000:]}"
    return done


def log_predictions(root: Path, data: pd.DataFrame, version: str) -> list[str]:
    """Write `data`'s records as one prediction segment of `version` (the API's layout); returns their ids."""
    started = datetime.now(UTC) - timedelta(days=7)
    features = data.drop(columns=["Churn"])
    ids = [f"e2e-{i:05d}" for i in range(len(data))]
    table = pa.Table.from_pydict(
        {
            "time": [started + timedelta(minutes=i) for i in range(len(data))],
            "prediction_id": ids,
            "entity_id": list(data["customerID"]),
            "model": [MODEL] * len(data),
            "version": [version] * len(data),
            "role": ["production"] * len(data),
            "score": [0.5] * len(data),
            "label": ["No"] * len(data),
            "features": [json.dumps(row) for row in features.to_dict("records")],
        },
        schema=PREDICTION_SCHEMA,
    )
    path = Path(prediction_segment(str(root), MODEL, started, "replica-a", 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return ids


def test_a_retrain_dispatched_by_the_relay_trains_on_the_labelled_log_and_changes_nothing_unless_it_beats_production(
    repo, tmp_path_factory
):
    keys = tmp_path_factory.mktemp("keys")
    subprocess.run([sys.executable, "-m", "pipeline", "keygen", "--out", str(keys)], cwd=repo, check=True)
    key, public = keys / "release.key", keys / "release.pub"
    log = tmp_path_factory.mktemp("prediction-log")
    with tracking_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        # given version 1 in production (the plain CLI, signed), and a week of its predictions whose outcomes came back
        env = {**os.environ, "MLFLOW_TRACKING_URI": server, "RELEASE_SIGNING_KEY": str(key),
               "PREDICTION_LOG_URI": str(log)}  # fmt: skip
        for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "KUBECONFIG"):
            env.pop(name, None)
        pipeline(repo, env, "make-data")
        pipeline(repo, env, "run")
        assert registry(server)[0] == {"candidate": "1", "production": "1"}
        served = pd.read_csv(repo / "data" / "churn.csv", dtype=str, keep_default_na=False).tail(LOGGED)
        ids = log_predictions(log, served, "1")
        labels = tmp_path_factory.mktemp("labels") / "outcomes.csv"
        pd.DataFrame({"prediction_id": ids, "outcome": list(served["Churn"])}).to_csv(labels, index=False)
        pipeline(repo, env, "outcomes", "--labels", str(labels))

        # when the relay's dispatch for a quality alert runs the retrain workflow
        event = repo.parent / "retrain-dispatch.json"
        payload = {"reason": "ModelLiveQualityLow: production: version 1's live F1 is low", "version": "1",
                   "alert": {"alertname": "ModelLiveQualityLow", "action": "retrain"}}  # fmt: skip
        event.write_text(json.dumps({"action": "retrain", "client_payload": payload,
                                     "repository": {"default_branch": "main"}}))  # fmt: skip
        output = act(
            repo, server, "repository_dispatch", "-W", RETRAIN, "-e", str(event),
            "--var", f"PREDICTION_LOG_URI={log}", keys=(key, public),
        )  # fmt: skip

        # then the run succeeds, says why it ran, and built its training set from the base data and the log
        assert act.returncode == 0, output[-4000:]  # type: ignore[attr-defined]  # act() records its exit code
        assert "retrain asked for by an alert: ModelLiveQualityLow: production: version 1 s live F1 is low" in output
        rows = len(pd.read_csv(repo / "data" / "churn.csv"))
        trained = LOGGED - HELD_OUT
        assert f"training set: {rows + trained} rows written to data/retrain.csv: {rows} from data/churn.csv, " \
               f"{trained} from the labelled prediction log" in output  # fmt: skip
        assert f"held out the newest {HELD_OUT} labelled rows for the gate's recent_outcomes rule" in output
        # the candidate trained on it and was held to beating production
        client = MlflowClient(server)
        experiment = client.get_experiment_by_name("churn")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        [retrained] = [run for run in runs if run.data.params.get("data.path") == "data/retrain.csv"]
        assert "f1 drop <= -0.001 vs production" in output
        # it did not establish a gain over production (its data is production's plus 200 copies): nothing changed
        assert "retrain: the candidate did not beat production (test rows or newest outcomes); " \
               "nothing changed" in output  # fmt: skip
        assert "### Retrain: production unchanged" in output  # the job summary
        assert "python -m pipeline register" not in output and "pipeline image" not in output
        assert "[release/deploy/promote]" not in output  # the promote job did not run
        assert registry(server)[0] == {"candidate": "1", "production": "1"} and len(registry(server)[1]) == 1
        assert retrained.info.status == "FINISHED"
