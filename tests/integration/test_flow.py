"""The stages run for real against a temporary sqlite MLflow."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from .candidate import restore_smoked_candidate

pytestmark = pytest.mark.integration

WEAKER_MODEL = "model.logistic_regression.class_weight=null"  # F1 about 0.57 vs 0.62: passes f1_min, drops > 0.02


def production(cli) -> str | None:
    return cli.status()["aliases"].get("production")


def deploy(cli, *overrides: str) -> str:
    """train -> gate -> register -> smoke -> promote, one stage at a time."""
    sets = [a for o in overrides for a in ("--set", o)]
    assert cli("train", *sets) == 0, cli.err
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id, *sets) == 0, cli.err
    assert cli("register", "--run-id", run_id) == 0, cli.err
    version = cli.out.strip()
    assert cli("smoke", "--version", version) == 0, cli.err
    assert cli("promote", "--version", version) == 0, cli.err
    return version


def version_3(cli) -> dict:
    return next(v for v in cli.status()["versions"] if v["version"] == "3")


def register_candidate(cli) -> str:
    """train -> gate -> register, no smoke or promotion; returns the run id."""
    assert cli("train") == 0, cli.err
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id) == 0 and cli("register", "--run-id", run_id) == 0, cli.err
    return run_id


def test_run_does_the_whole_flow(project, cli):
    assert cli("run") == 0, cli.err
    assert cli.out.strip() == "1"
    progress = cli.err
    state = cli.status()
    assert state["aliases"] == {"candidate": "1", "production": "1"}
    [version] = state["versions"]
    assert version["gate"] == "passed" and version["smoke"] == "passed"
    assert set(version["metrics"]) == {"f1", "precision", "recall", "roc_auc", "accuracy"}
    assert version["metrics"]["f1"] > 0.55
    moves = [(m["alias"], m["from"], m["to"]) for m in state["history"]]
    assert moves == [("candidate", None, "1"), ("production", None, "1")]
    assert all(m["reason"] and m["at"] and m["git_sha"] and m["by"] for m in state["history"])
    gate = json.loads((project / "reports" / "gate.json").read_text())
    assert gate["verdict"] == "passed" and gate["run_id"] == version["run_id"]
    for step in ("▶ train", "✓ gate", "✓ register", "✓ smoke", "✓ promote"):
        assert step in progress


def test_the_store_params_name_is_used_whatever_mlflow_s_global_tracking_uri(project, cli, monkeypatch):
    # given: no MLFLOW_TRACKING_URI, and MLflow's process-wide URI left pointing at another store
    mlflow.set_tracking_uri(f"sqlite:///{project / 'elsewhere.db'}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # which set_tracking_uri also set
    try:
        # when: the flow runs on the store params.yaml names
        sets = ["--set", f"registry.tracking_uri=sqlite:///{project / 'params-store.db'}"]
        assert cli("train", *sets) == 0, cli.err
        run_id = cli.out.strip()
        assert cli("gate", "--run-id", run_id, *sets) == 0, cli.err
        # then: register finds the logged model there, not through the global URI
        assert cli("register", "--run-id", run_id, *sets) == 0, cli.err
        client = MlflowClient(f"sqlite:///{project / 'params-store.db'}")
        assert client.get_model_version("churn-classifier", cli.out.strip()).run_id == run_id
    finally:
        mlflow.set_tracking_uri(None)


def test_training_run_logs_what_people_and_later_stages_need(project, cli):
    assert cli("train") == 0, cli.err
    run = MlflowClient().get_run(cli.out.strip())
    assert {"f1", "precision", "recall", "roc_auc", "accuracy", "training_time_s"} <= set(run.data.metrics)
    assert run.data.params["model.type"] == "logistic_regression"
    assert len(run.data.tags["data.fingerprint"]) == 64 and run.data.tags["data.rows"] == "7043"
    assert run.data.tags["git_sha"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/confusion_matrix.png", "plots/roc_curve.png", "plots/precision_recall.png"}
    model = mlflow.models.get_model_info(f"models:/{run.data.tags['model_id']}")
    assert model.signature is not None and "tenure" in model.signature.inputs.input_names()
    assert "customerID" not in model.signature.inputs.input_names()


def test_a_failing_gate_registers_nothing_and_leaves_production(project, cli, releases):
    releases.restore(project, versions=1)  # what `run` leaves
    before = cli.status()
    assert cli("run", "--set", "gates.f1_min=0.99") == 1
    assert "gate failed" in cli.err
    after = cli.status()
    assert after["versions"] == before["versions"] and after["aliases"] == before["aliases"]
    failed_run = json.loads((project / "reports" / "gate.json").read_text())["run_id"]
    run = MlflowClient().get_run(failed_run)
    assert run.data.tags["gate"] == "failed"
    with open(MlflowClient().download_artifacts(failed_run, "gate/gate.json")) as stored_report:
        stored = json.load(stored_report)
    assert stored["verdict"] == "failed" and stored["rules"][0]["threshold"] == 0.99


def test_a_failing_gate_on_an_empty_registry_creates_no_model(project, cli):
    assert cli("run", "--set", "gates.f1_min=0.99") == 1
    assert cli.status()["versions"] == []


def test_champion_challenger_refuses_a_worse_candidate(project, cli, releases):
    releases.restore(project, versions=1)  # what `run` leaves
    assert cli("run", "--set", WEAKER_MODEL) == 1
    report = json.loads((project / "reports" / "gate.json").read_text())
    rules = {rule["rule"]: rule for rule in report["rules"]}
    assert rules["f1_min"]["passed"] and not rules["max_f1_drop"]["passed"]
    assert rules["max_f1_drop"]["value"] == report["comparison"]["f1"]["ci_low"] < -0.02
    assert report["baseline"]["version"] == "1"
    assert production(cli) == "1" and len(cli.status()["versions"]) == 1


def test_register_is_idempotent_and_refuses_an_ungated_run(project, cli):
    assert cli("train") == 0
    run_id = cli.out.strip()
    assert cli("register", "--run-id", run_id) == 1
    assert "only runs that passed the gate" in cli.err
    assert cli("gate", "--run-id", run_id) == 0
    assert cli("register", "--run-id", run_id) == 0 and cli.out.strip() == "1"
    assert cli("register", "--run-id", run_id) == 0 and cli.out.strip() == "1"
    assert len(cli.status()["versions"]) == 1


def test_promote_refuses_when_a_newer_candidate_was_registered(project, cli, releases):
    # given: production 2, and 3 gated against it and smoke-tested; then 4 registered
    restore_smoked_candidate(releases, project)
    register_candidate(cli)
    before = cli.status()
    assert before["aliases"] == {"candidate": "4", "production": "2"}
    assert cli("promote", "--version", "3") == 1
    assert "candidate alias points at 4, not 3" in cli.err
    assert cli.status() == before


def test_promote_refuses_when_production_moved_after_the_gate(project, cli, releases):
    # given: production 2, and 3 gated against it and smoke-tested
    restore_smoked_candidate(releases, project)
    assert cli("rollback", "--reason", "incident 42") == 0  # production 2 -> 1 underneath
    before = cli.status()
    assert cli("promote", "--version", "3") == 1
    assert "production moved from 2 to 1" in cli.err
    assert cli.status() == before


def test_promote_is_idempotent(project, cli, releases):
    releases.restore(project, versions=1)
    version = "1"
    moves = len(cli.status()["history"])
    assert cli("promote", "--version", version) == 0
    assert len(cli.status()["history"]) == moves


def test_promote_refuses_a_version_whose_smoke_failed(project, cli, releases):
    restore_smoked_candidate(releases, project)  # production 2; 3 gated, registered and smoke-tested
    run_id = version_3(cli)["run_id"]
    # Tamper with the stored expectations so the served model genuinely disagrees.
    client = MlflowClient()
    with open(client.download_artifacts(run_id, "smoke/examples.json")) as stored_examples:
        examples = json.load(stored_examples)
    examples["predictions"] = ["No" if p == "Yes" else "Yes" for p in examples["predictions"]]
    client.log_dict(run_id, examples, "smoke/examples.json")
    assert cli("smoke", "--version", "3") == 1
    # the first load's probe already meets the disagreement, before the HTTP checks would
    assert "stored example 0 is answered" in cli.err and "recorded at training" in cli.err
    assert cli("promote", "--version", "3") == 1
    assert "has not passed smoke" in cli.err
    assert version_3(cli)["smoke"] == "failed" and production(cli) == "2"


def test_smoke_starts_the_api_with_the_serving_section_of_params(project, cli, releases):
    restore_smoked_candidate(releases, project)  # 3 registered, a candidate
    # the 25 smoke examples go in one request: a batch limit of 10 reaches the API smoke starts, which refuses them
    assert cli("smoke", "--version", "3", "--set", "serving.max_batch_size=10") == 1
    assert "25 records exceed the batch limit of 10" in cli.err
    assert cli("smoke", "--version", "3", "--set", "serving.max_batch_size=25") == 0, cli.err


def test_rollback_to_previous_and_to_a_named_version(project, cli, releases):
    releases.restore(project, versions=3)
    assert production(cli) == "3"
    assert cli("rollback", "--reason", "latency regression") == 0
    assert cli.out.strip() == "2" and production(cli) == "2"
    # a re-run deploy cannot promote the version production was rolled back away from (still @candidate)
    assert cli("promote", "--version", "3") == 1
    assert "version 3 was rolled back out of production" in cli.err and production(cli) == "2"
    assert cli("rollback", "--to", "3", "--reason", "false alarm") == 0
    assert production(cli) == "3"
    assert cli("rollback", "--to", "1", "--reason", "back to the first") == 0
    assert production(cli) == "1"
    rollbacks = [m for m in cli.status()["history"] if m["reason"].startswith("rollback:")]
    assert [(m["from"], m["to"], m["reason"]) for m in rollbacks] == [
        ("3", "2", "rollback: latency regression"),
        ("2", "3", "rollback: false alarm"),
        ("3", "1", "rollback: back to the first"),
    ]
    assert cli.status()["aliases"]["candidate"] == "3"  # rollback moves production only


def test_rollback_refusals_change_nothing(project, cli, releases):
    assert cli("rollback", "--reason", "x") == 2  # no model registered at all
    assert "not registered" in cli.err
    releases.restore(project, versions=1)  # what a deploy leaves
    before = cli.status()
    assert cli("rollback", "--reason", "no older version") == 1
    assert "nothing to roll back to" in cli.err
    assert cli("rollback", "--to", "7", "--reason", "typo") == 1
    assert "version 7 does not exist" in cli.err
    assert cli("rollback", "--reason", "   ") == 2
    assert "--reason" in cli.err
    register_candidate(cli)
    before = cli.status()
    assert cli("rollback", "--to", "2", "--reason", "never smoke tested") == 1
    assert "version 2 never passed gates and smoke" in cli.err
    assert cli.status() == before


def test_bad_params_exit_2_and_name_the_key(project, cli):
    assert cli("run", "--set", "gates.f1_min=high") == 2
    assert "gates.f1_min" in cli.err
    (project / "params.yaml").write_text((project / "params.yaml").read_text() + "\nextra: 1\n")
    assert cli("train") == 2
    assert "unknown key extra" in cli.err
    assert cli("gate") == 2  # --run-id is required


def test_unknown_run_id_is_a_clear_error(project, cli):
    assert cli("gate", "--run-id", "0123456789abcdef") == 2
    assert "run '0123456789abcdef' not found" in cli.err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.path=data/missing.csv", "does not exist"),
        ("data.target=Churned", "target column 'Churned' not found"),
        ("data.target=gender", "positive_label 'Yes' is not a class of 'gender'"),
    ],
)
def test_bad_data_exits_2_and_registers_nothing(project, cli, override, message):
    assert cli("run", "--set", override) == 2
    assert message in cli.err
    assert cli.status()["versions"] == []


def test_another_csv_works_by_pointing_params_at_it(project, cli):
    rng = np.random.default_rng(0)
    n = 600
    signal = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "age": (40 + 10 * rng.normal(size=n)).round(),
            "balance": np.where(
                rng.random(n) < 0.05, "", (1000 * signal + rng.normal(size=n) * 300).round(2).astype(str)
            ),
            "region": rng.choice(["north", "south", "east"], n),
            "defaulted": (signal + rng.normal(scale=0.7, size=n) > 0.8).astype(int),
        }
    )
    frame.to_csv(project / "loans.csv", index=False)
    sets = ["data.path=loans.csv", "data.target=defaulted", "data.positive_label=1", "data.id_column=null",
            "gates.f1_min=0.3", "registry.model_name=loans", "gates.slices.columns=[region, age]",
            "gates.slices.min_rows=20"]  # fmt: skip
    assert cli("run", *[a for s in sets for a in ("--set", s)]) == 0, cli.err
    slices = json.loads((project / "reports" / "gate.json").read_text())["slices"]
    assert [s["slice"] for s in slices][:3] == ["region = east", "region = north", "region = south"]
    assert [s["slice"] for s in slices][3].startswith("age < ") and sum(s["rows"] for s in slices) == 2 * 120
    assert cli("status", "--json", "--set", "registry.model_name=loans") == 0
    state = json.loads(cli.out)
    assert state["aliases"]["production"] == "1" and state["versions"][0]["metrics"]["f1"] > 0.3


def test_smoke_of_an_image_needs_an_http_tracking_server(project, cli, releases):
    releases.restore(project, versions=1)  # what `run` leaves
    assert cli("smoke", "--version", "1", "--image", "churn-api:any") == 2
    assert "needs a tracking server the container can reach over HTTP" in cli.err
    assert cli.status()["versions"][0]["smoke"] == "passed"  # the refusal recorded nothing


def test_status_table_shows_versions_aliases_and_history(project, cli, releases):
    assert cli("status") == 0 and "no versions registered yet" in cli.out
    releases.restore(project, versions=1)  # what a deploy leaves
    assert cli("status") == 0
    assert "@production -> 1" in cli.out and "alias history" in cli.out and "promoted after" in cli.out
