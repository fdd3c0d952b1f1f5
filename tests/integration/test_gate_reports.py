"""The gates on real runs: a retrain of production, a lost column, a slice regression, a loosened floor."""

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from .test_flow import WEAKER_MODEL

pytestmark = pytest.mark.integration


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def train(cli, *overrides: str) -> str:
    assert cli("train", *sets(*overrides)) == 0, cli.err
    return cli.out.strip()


def report(project) -> dict:
    return json.loads((project / "reports" / "gate.json").read_text())


def test_a_retrain_of_production_passes_with_delta_zero_and_gating_it_twice_writes_the_same_bytes(
    project, cli, releases
):
    releases.restore(project, versions=1)
    run_id = train(cli)
    assert cli("gate", "--run-id", run_id, *sets("gates.slices.columns=[Contract]")) == 0, cli.err
    first = (project / "reports" / "gate.json").read_bytes(), (project / "reports" / "gate.md").read_bytes()
    f1 = report(project)["comparison"]["f1"]
    assert f1["delta"] == 0 and f1["ci_low"] <= 0 <= f1["ci_high"]
    assert f1["candidate_ci"][0] < f1["candidate"] < f1["candidate_ci"][1]
    assert all(s["gated"] and s["delta"] == 0 for s in report(project)["slices"])
    assert cli("gate", "--run-id", run_id, *sets("gates.slices.columns=[Contract]")) == 0
    again = (project / "reports" / "gate.json").read_bytes(), (project / "reports" / "gate.md").read_bytes()
    assert again == first
    logged = MlflowClient().download_artifacts(run_id, "gate/gate.json")
    assert Path(logged).read_bytes() == first[0]


def test_a_candidate_that_lost_a_column_fails_naming_it_unless_the_break_is_allowed(project, cli, releases):
    releases.restore(project, versions=1)
    frame = pd.read_csv("data/churn.csv", dtype=str, keep_default_na=False)
    frame.drop(columns=["tenure"]).to_csv("data/no-tenure.csv", index=False)
    without = "data.path=data/no-tenure.csv"
    run_id = train(cli, without)
    assert cli("gate", "--run-id", run_id, *sets(without)) == 1
    rules = {r["rule"]: r for r in report(project)["rules"]}
    assert report(project)["schema"]["removed"] == ["tenure"]
    assert not rules["serving_schema"]["passed"] and "removes field 'tenure'" in rules["serving_schema"]["detail"]
    assert "lack column(s) 'tenure'" in rules["max_f1_drop"]["detail"]
    assert "column 'tenure' is gone" in report(project)["drift"]["warnings"]

    # allowed: the same run gated again, production is scored with the column missing, and the version and the
    # ledger say so
    allowed = sets(without, "gates.allow_breaking_schema=true")
    assert cli("gate", "--run-id", run_id, *allowed) == 0, cli.err
    assert cli("register", "--run-id", run_id) == 0, cli.err
    version = cli.out.strip()
    assert cli("smoke", "--version", version) == 0 and cli("promote", "--version", version) == 0, cli.err
    rules = {r["rule"]: r for r in report(project)["rules"]}
    assert rules["serving_schema"]["passed"] and "ALLOWED" in rules["serving_schema"]["detail"]
    assert rules["max_f1_drop"]["value"] is not None
    assert "scored with tenure missing" in " ".join(report(project)["notes"])
    mv = MlflowClient().get_model_version("churn-classifier", version)
    assert mv.tags["gate.schema_break_allowed"] == "removes field 'tenure'"
    assert "schema break allowed: removes field 'tenure'" in cli.status()["history"][-1]["reason"]


def test_a_slice_that_regresses_fails_the_gate_and_is_named(project, cli, releases):
    releases.restore(project, versions=1)
    overrides = (WEAKER_MODEL, "gates.max_f1_drop=null", "gates.slices.columns=[Contract]")
    run_id = train(cli, *overrides)
    assert cli("gate", "--run-id", run_id, *sets(*overrides)) == 1
    [failed] = [r for r in report(project)["rules"] if not r["passed"]]
    assert failed["rule"] == "slice_f1_drop[Contract]" and "Contract = Two year" in failed["detail"]
    two_year = next(s for s in report(project)["slices"] if s["slice"] == "Contract = Two year")
    assert two_year["ci_low"] < -0.05 and two_year["rows"] >= 100
    assert "❌ `slice_f1_drop[Contract]`" in (project / "reports" / "gate.md").read_text().split("```mermaid")[0]


def test_a_loosened_floor_is_shown_at_the_top_of_the_report_and_does_not_block(project, cli):
    run_id = train(cli)
    assert cli("gate", "--run-id", run_id, "--base-params", "params.yaml", *sets("gates.f1_min=0.30")) == 0
    [change] = report(project)["policy_changes"]
    assert (change["key"], change["before"], change["after"], change["direction"]) == (
        "gates.metrics.f1.min", 0.55, 0.30, "loosened"
    )  # fmt: skip
    head = (project / "reports" / "gate.md").read_text().split("```mermaid")[0]
    assert "⚠ lowers the F1 floor from 0.55 to 0.3" in head and "policy loosened" in cli.err
    assert cli("gate", "--run-id", run_id, "--base-params", "missing.yaml") == 2
    assert "--base-params missing.yaml: cannot read params file" in cli.err


def test_the_model_card_is_logged_with_the_run_and_linked_from_the_version(project, cli):
    # the card is the gate's, and register links it: smoke and promote add nothing to it
    use = "card.intended_use=Ranking accounts for the retention team."
    run_id = train(cli, use)
    assert cli("gate", "--run-id", run_id, *sets(use)) == 0 and cli("register", "--run-id", run_id) == 0, cli.err
    version = cli.out.strip()
    card = (project / "reports" / "model_card.md").read_text()
    assert "Ranking accounts for the retention team." in card and "**Gate: passed**" in card
    assert "| f1 |" in card and "sha256:" in card and "`Contract` categorical" in card
    mv = MlflowClient().get_model_version("churn-classifier", version)
    assert Path(MlflowClient().download_artifacts(mv.run_id, "model_card.md")).read_text() == card
    assert f"runs:/{mv.run_id}/model_card.md" in mv.description


def test_a_gated_metric_the_run_never_logged_or_an_unknown_slice_column_is_bad_input(project, cli):
    run_id = train(cli)
    assert cli("gate", "--run-id", run_id, *sets("gates.metrics.mcc.min=0.2")) == 2
    assert "gates.metrics.mcc: run" in cli.err and "no such metric" in cli.err
    assert cli("gate", "--run-id", run_id, *sets("gates.slices.columns=[Region]")) == 2
    assert "'Region' is not a feature of the model" in cli.err
