"""Live quality in deploy/: the alerts on the signed quality verdicts, where Alertmanager sends them, and the panel."""

from __future__ import annotations

import json
import re

import pytest

from .test_alertmanager import receivers
from .tools import DEPLOY, ROOT, alerting_rules, load_yaml

# The API's live quality metrics (api/metrics.py, from each version's signed `quality` verdict).
QUALITY_METRICS = {"model_live_f1", "model_gate_f1", "model_live_labelled", "model_quality_failed"}
BOUNDS = {"estimate", "low", "high"}
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "churn-api.json"


def quality_rules() -> dict[str, dict]:
    """The alerts that read the live quality metrics, by name."""
    return {
        rule["alert"]: rule
        for rule in alerting_rules()
        if set(re.findall(r"\b(model_[a-z_0-9]+)\b", rule["expr"])) & QUALITY_METRICS
    }


def test_the_quality_alerts_read_only_the_quality_contract_from_the_api() -> None:
    """The two quality alerts read the API's metric names, scraped from job churn-api, one replica's value."""
    rules = quality_rules()
    assert set(rules) == {"ModelLiveQualityFailed", "ModelLiveQualityLow"}
    for name, rule in rules.items():
        assert set(re.findall(r"\b(model_[a-z_0-9]+)\b", rule["expr"])) <= QUALITY_METRICS, name
        for selector in re.findall(r"\bmodel_[a-z_0-9]+\{([^}]*)\}", rule["expr"]):
            assert 'job="churn-api"' in selector, name
        bounds = set(re.findall(r'bound="([^"]*)"', rule["expr"]))
        assert bounds <= BOUNDS, name
        # every replica exports the same verdict: one value per environment and version, never a sum
        assert "sum" not in rule["expr"] and "max by (environment, version)" in rule["expr"], name


def test_a_failed_verdict_on_production_s_version_asks_for_a_rollback() -> None:
    """ModelLiveQualityFailed: critical, action=rollback, joined to the version production serves, like the others."""
    rule = quality_rules()["ModelLiveQualityFailed"]
    assert rule["labels"] == {"severity": "critical", "action": "rollback"}
    assert "model_quality_failed" in rule["expr"] and "== 1" in rule["expr"]
    assert "and on (environment, version) api:serving_version:workers" in rule["expr"]
    runbook = rule["annotations"]["runbook"]
    assert "`python -m pipeline quality --version {{ $labels.version }}`" in " ".join(runbook.split())
    assert "reports/quality.md" in runbook and "rollback relay" in runbook
    assert "`python -m pipeline rollback --reason" in runbook and "retrain.yml" in runbook


def test_the_warning_asks_for_a_retrain_at_the_drop_and_rows_quality_itself_uses() -> None:
    """ModelLiveQualityLow: live F1's upper bound under the gate figure minus max_drop, on min_labelled rows."""
    outcomes = load_yaml(ROOT / "params.yaml").get("rollout", {}).get("outcomes")
    if not isinstance(outcomes, dict) or not {"max_drop", "min_labelled"} <= set(outcomes):
        pytest.skip("params.yaml's rollout.outcomes has no max_drop and min_labelled")
    rule = quality_rules()["ModelLiveQualityLow"]
    assert rule["labels"] == {"severity": "warning", "action": "retrain"}
    expr = " ".join(rule["expr"].split())
    live, gate = r'model_live_f1\{job="churn-api", bound="high"\}\)', r'\(model_gate_f1\{job="churn-api"\}\)'
    drop = re.search(rf"{live} < on \(environment, version\) max by \(environment, version\) {gate} - ([0-9.]+)", expr)
    assert drop and float(drop[1]) == outcomes["max_drop"], expr
    rows = re.search(r"model_live_labelled\{job=\"churn-api\"\}\) >= ([0-9]+)", expr)
    assert rows and int(rows[1]) == outcomes["min_labelled"], expr
    assert expr.endswith("and on (environment, version) api:serving_version:workers")
    said = " ".join(rule["annotations"]["description"].split())
    assert f"{outcomes['max_drop']} (rollout.outcomes.max_drop)" in said
    assert f"{outcomes['min_labelled']} labelled rows" in said
    assert f"minus {outcomes['max_drop']}" in rule["annotations"]["summary"]
    assert "`gh run list --workflow retrain.yml" in rule["annotations"]["runbook"]


@pytest.mark.parametrize("name", ["ModelLiveQualityFailed", "ModelLiveQualityLow"])
def test_production_s_quality_alerts_reach_the_relay_and_people_and_staging_s_people_only(name: str) -> None:
    """Alertmanager's routes: the relay dispatches the rollback or the retrain, and a person is told either way."""
    rule = quality_rules()[name]
    labels = {"alertname": name, **rule["labels"], "version": "7"}
    assert receivers({**labels, "environment": "production"}) == ["rollback-relay", "default"]
    assert receivers({**labels, "environment": "staging"}) == ["default"]


def test_the_dashboard_shows_live_f1_with_its_interval_against_the_gate_and_the_labelled_rows() -> None:
    """One live quality panel: the estimate and its bounds, the gate's figure, the labelled rows, per version."""
    board = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in board["panels"] if any("model_live_f1" in t["expr"] for t in p.get("targets", []))]
    exprs = {target["refId"]: target["expr"] for target in panel["targets"]}
    for bound in BOUNDS:
        assert any(f'bound="{bound}"' in expr for expr in exprs.values()), bound
    assert any("model_gate_f1" in expr for expr in exprs.values())
    assert any("model_live_labelled" in expr for expr in exprs.values())
    for expr in exprs.values():
        assert 'job="churn-api", environment="$environment"' in expr, expr
        assert "max by (version" in expr, expr  # one replica's figure, not the sum of all
    said = panel["description"]
    assert "python -m pipeline quality" in said and "ModelLiveQualityFailed" in said
