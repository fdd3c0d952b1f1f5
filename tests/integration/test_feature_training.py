"""Training from a real Feast repository (built, applied, materialized): parity with the CSV, the record, skew.

One project for the module: 1,500 generated rows written as the feature views' Parquet and the entity frame,
applied and materialized once into the SQLite online store (Feast in build/feast-venv). The CSV path and the
feature-store path train on the same rows; the gate reads sampled customers online and offline.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from api.release.check import logged_model_files
from api.release.safe_model import load_estimator_bytes
from pipeline.core.churn_data import generate_churn
from pipeline.core.feature_training import SERVICE_FILE, VERSION_TAGS
from pipeline.core.params_file import load_params
from pipeline.stages.skew import sample_ids

from ..conftest import ROOT
from .released import QuietCli

pytestmark = pytest.mark.integration

ROWS = 1500
SERVICE = "churn_model"
ON = ("--set", f"feature_store.service={SERVICE}")
FEAST_PYTHON = ROOT / "build" / "feast-venv" / "bin" / "python"


@pytest.fixture(scope="module")
def project(tmp_path_factory, empty_mlflow_db):
    """A project whose feature store is built from its CSV, applied and materialized; the CLI run inside it."""
    if not FEAST_PYTHON.exists():
        pytest.fail("Feast's environment is missing: run `make feast`")
    folder = tmp_path_factory.mktemp("feature-training")
    patch = pytest.MonkeyPatch()
    patch.chdir(folder)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_SHA", "GITHUB_ACTOR"):
        patch.delenv(name, raising=False)
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    shutil.copytree(ROOT / "featurestore" / "repo", folder / "featurestore" / "repo")
    (folder / "data").mkdir()
    generate_churn(ROWS, 42).to_csv(folder / "data" / "churn.csv", index=False)
    cli = QuietCli()
    for command in (("features", "build"), ("features", "apply"), ("features", "materialize")):
        assert cli(*command, "--set", f"data.rows={ROWS}") == 0, f"{command}: {cli.err}"
    yield folder, cli
    patch.undo()


def trained(cli: QuietCli, *args: str) -> str:
    assert cli("train", *args) == 0, cli.err
    return cli.out.strip().splitlines()[-1]


def fitted(client: MlflowClient, run_id: str, dst: Path):
    """The run's logged model: its files (as the gate and the API fetch them) and the fitted pipeline."""
    files = logged_model_files(client, client.get_run(run_id).data.tags["model_id"], run_id, dst)
    return files, load_estimator_bytes(files.artifact.model_bytes)


@pytest.fixture(scope="module")
def store_run(project) -> str:
    """One run trained from the feature service, shared by the tests that only read or gate it."""
    return trained(project[1], *ON)


def test_the_same_rows_through_the_csv_and_the_feature_store_give_the_same_model(project, store_run, tmp_path):
    folder, cli = project
    client = MlflowClient()
    from_csv, from_store = trained(cli), store_run
    _, csv_model = fitted(client, from_csv, tmp_path / "csv")
    files, store_model = fitted(client, from_store, tmp_path / "store")
    rows = pd.read_csv(folder / "data" / "churn.csv", dtype=str, keep_default_na=False, na_values=[""])
    X = load_params(folder / "params.yaml")
    assert X.feature_store.service is None  # the default: the CSV path
    features = rows.drop(columns=["customerID", "Churn"])
    from pipeline.core.data import infer_types

    typed, _ = infer_types(features)
    assert np.array_equal(csv_model.predict_proba(typed), store_model.predict_proba(typed))
    assert np.array_equal(
        csv_model.named_steps["classifier"].coef_, store_model.named_steps["classifier"].coef_
    )  # the same coefficients, not only the same answers
    csv_run, store_record = client.get_run(from_csv), client.get_run(from_store)
    assert csv_run.data.metrics["f1"] == store_record.data.metrics["f1"]
    test_sets = [
        pd.read_csv(client.download_artifacts(r, "eval/test.csv"), dtype=str).sort_index(axis=1)
        for r in (from_csv, from_store)
    ]
    pd.testing.assert_frame_equal(*test_sets)  # the same split

    # what the run records: the service, its views, the definitions' hash and the entity frame's fingerprint
    tags, params = store_record.data.tags, store_record.data.params
    record = json.loads((files.model_dir / SERVICE_FILE).read_text())
    assert tags["feature_store.service"] == record["service"] == SERVICE
    assert tags["feature_store.views"] == ",".join(v["name"] for v in record["views"])
    assert tags["feature_store.definitions_hash"] == record["definitions_hash"]
    assert len(tags["feature_store.entities_fingerprint"]) == 64 and not any(
        k.startswith("feature_store.") for k in csv_run.data.tags
    )
    for view in record["views"]:
        assert params[f"feature_store.view.{view['name']}"] == ",".join(f"{n}:{t}" for n, t in view["features"])
    # the record is in MLmodel too, which the artifact digest covers
    assert SERVICE in (files.model_dir / "MLmodel").read_text()

    # and the version carries it
    assert cli("gate", "--run-id", from_store, *ON) == 0, cli.err
    assert cli("register", "--run-id", from_store) == 0, cli.err
    version = client.get_model_version("churn-classifier", cli.out.strip())
    assert {k: version.tags[k] for k in VERSION_TAGS} == {k: tags[k] for k in VERSION_TAGS}


def test_a_feature_value_changed_offline_but_not_online_fails_the_gate_naming_it(project, store_run):
    folder, cli = project
    run_id = store_run
    params = load_params(folder / "params.yaml", [f"feature_store.service={SERVICE}"])
    assert cli("gate", "--run-id", run_id, *ON) == 0, cli.err
    rules = {r["rule"]: r for r in report(folder)["rules"]}
    assert rules["feature_skew"]["passed"] and "every feature agrees" in rules["feature_skew"]["detail"]
    # the API's own reader reads what Feast does on the same store
    assert rules["serving_reader"]["passed"] and "every feature agrees" in rules["serving_reader"]["detail"]

    entities = pd.read_parquet(params.feature_store.entities)
    customer = sample_ids(entities, "customerID", params.feature_store.skew.sample, params.data.seed)[0]
    account = Path(params.feature_store.entities).with_name("customer_account.parquet")
    original = account.read_bytes()
    frame = pd.read_parquet(account)
    frame.loc[frame["customerID"] == customer, "MonthlyCharges"] += 10.0  # offline only: not materialized
    frame.to_parquet(account, index=False)
    try:
        assert cli("gate", "--run-id", run_id, *ON) == 1
    finally:
        account.write_bytes(original)
    skew = {r["rule"]: r for r in report(folder)["rules"]}["feature_skew"]
    assert not skew["passed"] and skew["value"] == 1
    assert "customer_account.MonthlyCharges differs for 1/" in skew["detail"] and customer in skew["detail"]
    assert "TotalCharges" not in skew["detail"] and "customer_profile" not in skew["detail"].split("disagree")[1]
    assert "feature_skew" in (folder / "reports" / "gate.md").read_text()


def test_an_online_store_the_api_reads_differently_from_feast_fails_the_gate(project, store_run, tmp_path, monkeypatch):
    """FEATURE_STORE_URL names a copy with MonthlyCharges rewritten: Feast reads the original, the API the copy."""
    folder, cli = project
    run_id = store_run
    online = folder / "data" / "features" / "online.db"
    copy = tmp_path / "online.db"
    shutil.copy(online, copy)
    with sqlite3.connect(copy) as db:  # a ValueProto double_val (field 5, fixed64): 12345.0
        db.execute(
            "UPDATE churn_customer_account SET value = ? WHERE feature_name = 'MonthlyCharges'",
            (b"\x29" + struct.pack("<d", 12345.0),),
        )
    monkeypatch.setenv("FEATURE_STORE_URL", f"sqlite://{copy}")
    assert cli("gate", "--run-id", run_id, *ON) == 1
    rules = {r["rule"]: r for r in report(folder)["rules"]}
    assert rules["feature_skew"]["passed"]  # Feast's online and offline reads still agree
    reader = rules["serving_reader"]
    assert not reader["passed"] and reader["value"] == 1, reader
    assert "customer_account.MonthlyCharges differs" in reader["detail"] and "12345.0" in reader["detail"]


def report(folder: Path) -> dict:
    return json.loads((folder / "reports" / "gate.json").read_text())


def test_a_changed_feature_definition_shows_in_the_policy_diff_against_production(project):
    folder, cli = project
    client = MlflowClient()
    run_id = trained(cli, *ON)
    assert cli("gate", "--run-id", run_id, *ON) == 0 and cli("register", "--run-id", run_id) == 0, cli.err
    version = cli.out.strip()
    # smoke serves it by reading the repo's own SQLite online store: ready, and the stored examples answered
    assert cli("smoke", "--version", version, *ON) == 0, cli.err
    client.set_registered_model_alias("churn-classifier", "production", version)
    definitions = folder / "featurestore" / "repo" / "churn_features.py"
    before = definitions.read_text()
    definitions.write_text(before + "\n# a changed definition: the hash moves\n")
    try:
        assert cli("features", "apply") == 0, cli.err
        changed = trained(cli, *ON)
        assert cli("gate", "--run-id", changed, "--base-params", "params.yaml", *ON) == 0, cli.err
    finally:
        definitions.write_text(before)
        cli("features", "apply")
    changes = {c["key"]: c for c in report(folder)["policy_changes"]}
    hashed = changes["feature_store.definitions_hash"]
    assert (
        hashed["before"] != hashed["after"]
        and hashed["after"] == client.get_run(changed).data.tags["feature_store.definitions_hash"]
    )
    assert "changes the feature definitions from" in (folder / "reports" / "gate.md").read_text()
