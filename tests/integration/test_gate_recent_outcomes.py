"""The gate's recent_outcomes rule on real runs: a signed production in a sqlite MLflow registry, a prediction log
folder as the API writes it (test_outcomes_quality's helpers), training-set, train and gate through the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.verdicts import load_verify_key
from pipeline.core.gate_answers import score
from pipeline.store import gate_inputs

from .test_flow import WEAKER_MODEL
from .test_outcomes_quality import MODEL, T0, segment, signed, write_segment  # noqa: F401  # signed: a fixture

pytestmark = pytest.mark.integration

RULE_ON = "gates.recent_outcomes={rows: 300, min_rows: 200, max_drop: 0}"


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def customers(project, count: int) -> pd.DataFrame:
    return pd.read_csv(project / "data" / "churn.csv", dtype=str, keep_default_na=False).iloc[:count]


def production_says(project, rows: pd.DataFrame) -> list[str]:
    """Production v2's own labels for `rows`, loaded as the gate loads it (release check, then the model)."""
    key = load_verify_key(str(project / "keys" / "release.pub"))
    model, error = gate_inputs.production(MlflowClient(), MODEL, "2", project / "production-model", key)
    assert model is not None, error
    return ["Yes" if yes else "No" for yes in score(model, rows.drop(columns=["Churn"]), "Yes").predicted]


def feed_labels(project, cli, ids: list[str], outcomes: list[str]) -> None:
    pd.DataFrame({"prediction_id": ids, "outcome": outcomes}).to_csv(project / "labels.csv", index=False)
    assert cli("outcomes", "--labels", str(project / "labels.csv")) == 0, cli.err


def rules(project) -> dict[str, dict]:
    return {r["rule"]: r for r in json.loads((project / "reports" / "gate.json").read_text())["rules"]}


def test_a_retrain_worse_than_production_on_the_newest_outcomes_fails_the_gate_naming_the_rule(signed, cli):  # noqa: F811
    # given: production v2 answered 600 customers, and their outcomes came back as exactly what v2 said
    data = customers(signed, 600)
    write_segment(signed, "2", "production", data, wrong=False)
    feed_labels(signed, cli, [f"production-2-{c}" for c in data["customerID"]], production_says(signed, data))
    # when: the retrain's training set is built with the rule on
    assert cli("training-set", "--out", str(signed / "build" / "retrain.csv"), *sets(RULE_ON)) == 0, cli.err
    # then: the newest 300 labelled rows are held out, and said so; the older 300 are training rows
    assert "held out the newest 300 labelled rows for the gate's recent_outcomes rule" in cli.out
    assert "300 from the labelled prediction log" in cli.out
    built = pd.read_csv(signed / "build" / "retrain.csv", dtype=str, keep_default_na=False)
    assert set(built["customerID"].iloc[-300:]) == set(data["customerID"].iloc[:300])
    # when: a weaker model is trained on it and gated as the retrain workflow gates it (the test rows' paired
    # rule off here, so the newest outcomes alone compare it with production)
    assert cli("train", *sets("data.path=build/retrain.csv", WEAKER_MODEL)) == 0, cli.err
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id, *sets(RULE_ON, "gates.metrics.f1.max_drop=null")) == 1
    # then: the gate fails on recent_outcomes alone, naming the rows and production, in the JSON and the Markdown
    found = rules(signed)
    assert not found["recent_outcomes"]["passed"] and found["recent_outcomes"]["value"] < 0
    assert found["recent_outcomes"]["detail"].startswith("on the newest 300 labelled rows: f1 ")
    assert "vs production v2 1.0000" in found["recent_outcomes"]["detail"]
    assert [name for name, r in found.items() if not r["passed"]] == ["recent_outcomes"]
    assert "| `recent_outcomes` | f1 |" in (signed / "reports" / "gate.md").read_text()
    assert "FAIL recent_outcomes" in cli.err + cli.out and "gate failed" in cli.err
    assert MlflowClient().get_run(run_id).data.tags.get(contract.GATE) == "failed"


def test_too_few_newest_outcomes_are_not_judged_and_the_gate_passes_saying_so(signed, cli):  # noqa: F811
    # given: 100 of production's answers labelled, and 20 more whose features are a feature store reference
    data = customers(signed, 120)
    write_segment(signed, "2", "production", data.iloc[:100], wrong=False)
    stored = segment("2", "production", data.iloc[100:], wrong=False)
    reference = [json.dumps({"feature_service": "churn_model", "customerID": c}) for c in data["customerID"][100:]]
    stored = stored.set_column(stored.schema.get_field_index("features"), "features", [reference])
    pq.write_table(stored, signed / "log" / "predictions" / MODEL / T0.strftime("%Y-%m-%d") / "120500.0-store.parquet")
    feed_labels(signed, cli, [f"production-2-{c}" for c in data["customerID"]], list(data["Churn"]))
    # when: a retrain of production is gated with the rule on
    assert cli("train") == 0, cli.err
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id, *sets(RULE_ON)) == 0, cli.err
    # then: the rule passes as not judged, counting the rows it had and those it skipped
    rule = rules(signed)["recent_outcomes"]
    assert rule["passed"] and rule["value"] is None
    assert rule["detail"] == "not judged (100 rows < 200); skipped 20 with a feature store reference for features"
