"""deploy/prometheus: the rules pass promtool's checks and unit tests, and say what the on-call engineer needs."""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml

from gates.profile import PSI_FLOOR
from pipeline.core.config import build_params, load_params
from pipeline.core.errors import ConfigError

from .tools import API_METRICS, DEPLOY, ROOT, alerting_rules, load_yaml, rules, run, system_tool

RULES = DEPLOY / "prometheus" / "rules.yml"
UNIT_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))

# The alerts a rollback can cure, for the version production serves (see rules.yml's header).
ROLLBACK_ALERTS = {"ChurnApiHigh5xxRatio", "ChurnApiLatencyOverBudget", "ChurnApiFeatureDrift"}


def promtool() -> str:
    """Return promtool, from Debian's prometheus package."""
    return system_tool("promtool", "prometheus")


def unit_test_cases() -> list[dict]:
    """Return every alert_rule_test case of every promtool unit test file."""
    return [
        case for path in UNIT_TESTS for test in load_yaml(path)["tests"] for case in test.get("alert_rule_test", [])
    ]


def test_promtool_checks_the_rules() -> None:
    """Every expression and template parses, and promtool's linter finds no duplicate rule."""
    result = run([promtool(), "check", "rules", "--lint=all", "--lint-fatal", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """The unit tests in deploy/prometheus/tests: each alert firing and quiet, and the PSI's value."""
    assert UNIT_TESTS
    result = run([promtool(), "test", "rules", *map(str, UNIT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a unit test where it fires and one where it must stay quiet."""
    cases = unit_test_cases()
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - firing == set(), "never tested firing"
    assert names - quiet == set(), "never tested quiet"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_tells_what_to_do(rule: dict) -> None:
    """A severity, and a summary, a description and a runbook with commands to run."""
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert set(rule["annotations"]) >= {"summary", "description", "runbook"}
    runbook = rule["annotations"]["runbook"]
    assert re.search(r"`(python -m pipeline|kubectl|curl|gh) [^`]+`", runbook), runbook
    assert "$labels.environment" in rule["annotations"]["summary"], "say which environment"


def test_rollback_alerts_are_the_curable_ones_and_concern_production_only() -> None:
    """action=rollback on the 5xx ratio, latency and drift alerts, each joined to production's served version."""
    marked = {rule["alert"]: rule for rule in alerting_rules() if rule["labels"].get("action") == "rollback"}
    assert set(marked) == ROLLBACK_ALERTS
    for rule in marked.values():
        assert rule["labels"]["severity"] == "critical"
        assert "and on (environment, version) api:serving_version:workers" in rule["expr"]
        assert "rollback" in rule["annotations"]["runbook"]


def test_latency_budget_is_the_smoke_budget() -> None:
    """The p99 alert uses params.yaml's smoke.latency_budget_ms, the latency each version proved at smoke."""
    budget_ms = load_yaml(ROOT / "params.yaml")["smoke"]["latency_budget_ms"]
    (rule,) = [rule for rule in alerting_rules() if rule["alert"] == "ChurnApiLatencyOverBudget"]
    threshold = float(re.search(r'quantile="0\.99"\} > ([0-9.]+)', rule["expr"]).group(1))
    assert threshold == budget_ms / 1000
    assert f"{budget_ms} ms" in rule["annotations"]["summary"]


def test_drift_levels_are_the_monitoring_params() -> None:
    """The drift alerts, what they say and the dashboard's PSI panel use params.yaml's monitoring levels."""
    levels = load_params(ROOT / "params.yaml").monitoring
    expected = {"ChurnApiFeatureDriftWarning": levels.drift_warn_psi, "ChurnApiFeatureDrift": levels.drift_alert_psi}
    found = {}
    for rule in alerting_rules():
        if rule["alert"] in expected:
            level = expected[rule["alert"]]
            found[rule["alert"]] = float(re.search(r"api:feature_psi:15m > ([0-9.]+)", rule["expr"]).group(1))
            assert float(re.search(r"above ([0-9.]+)", rule["annotations"]["description"])[1]) == level, rule["alert"]
    assert found == expected
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "churn-api.json").read_text())
    (panel,) = [p for p in board["panels"] if any("api:feature_psi:15m" in t["expr"] for t in p.get("targets", []))]
    steps = [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, levels.drift_warn_psi, levels.drift_alert_psi], panel["title"]
    said = re.search(r"([0-9.]+) warns; ([0-9.]+) for", panel["description"])
    assert (float(said[1]), float(said[2])) == (levels.drift_warn_psi, levels.drift_alert_psi), panel["description"]


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ({"drift_warn_psi": 0.3, "drift_alert_psi": 0.25}, "must be below drift_alert_psi"),
        ({"drift_warn_psi": 0}, "monitoring.drift_warn_psi: Input should be greater than 0"),
        ({"drift_alert_psi": 20}, "monitoring.drift_alert_psi: Input should be less than or equal to 10"),
    ],
)
def test_monitoring_levels_warn_before_they_alert(levels: dict, message: str) -> None:
    """A warning level at or above the alert level, or a level no PSI can mean, is refused naming the key."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_params({"monitoring": levels})


def test_rules_read_only_the_metrics_the_api_exports() -> None:
    """Every raw metric a rule reads is in the API's metric contract, scraped from job churn-api."""
    for group in rules()["groups"]:
        for rule in group["rules"]:
            names = set(re.findall(r"\b(api_[a-z_]+)\b", rule["expr"]))
            assert names <= API_METRICS, f"{rule.get('record') or rule.get('alert')}: {names - API_METRICS}"
            for selector in re.findall(r"\b(?:api_[a-z_]+|up)\{([^}]*)\}", rule["expr"]):
                assert 'job="churn-api"' in selector, rule["expr"]


def test_recording_rules_follow_the_naming_convention() -> None:
    """level:metric:operations names, and every series keeps the environment label."""
    for group in rules()["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                assert re.fullmatch(r"api:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
                assert "environment" in rule["expr"] or "api:" in rule["expr"], rule["record"]


def test_psi_rule_clamps_like_the_gate() -> None:
    """Live PSI clamps empty bins to the same floor as the gate's offline PSI (gates/profile.py)."""
    psi_rules = [rule["expr"] for group in rules()["groups"] for rule in group["rules"] if "clamp_min" in rule["expr"]]
    assert len(psi_rules) == 2
    for expr in psi_rules:
        assert float(re.search(r"clamp_min\([\s\S]*,\s*([0-9.e-]+)\s*\)\s*$", expr).group(1)) == PSI_FLOOR


def psi(actual: list[float], expected: list[float]) -> float:
    """Compute PSI over matching bins with both shares clamped to the gate's floor."""
    pairs = [(max(a, PSI_FLOOR), max(e, PSI_FLOOR)) for a, e in zip(actual, expected, strict=True)]
    return sum((a - e) * math.log(a / e) for a, e in pairs)


def test_psi_unit_test_values_are_the_hand_computed_ones() -> None:
    """The PSI values promtool checks in tests/drift.yml are the ones computed here from the example's shares."""
    expected = {
        "Contract": psi([0.6, 0.3, 0.0, 0.1], [0.5, 0.3, 0.2, 0.0]),  # Month-to-month, One year, Two year, unseen
        "PaperlessBilling": psi([0.4, 0.6], [0.6, 0.4]),
    }
    assert expected["Contract"] == pytest.approx(2.2277373, abs=1e-7)
    assert expected["PaperlessBilling"] == pytest.approx(2 * 0.2 * math.log(1.5))
    drift = load_yaml(DEPLOY / "prometheus" / "tests" / "drift.yml")
    checked = {
        yaml_labels(sample["labels"])["feature"]: sample["value"]
        for case in drift["tests"][0]["promql_expr_test"]
        if case["expr"] == "api:feature_psi:15m"
        for sample in case["exp_samples"]
    }
    assert checked == pytest.approx(expected, rel=1e-12)


def yaml_labels(series: str) -> dict[str, str]:
    """Return the labels of a series written as name{a="x", b="y"}."""
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


def test_unit_test_files_load_the_rules_file() -> None:
    """Each unit test file tests deploy/prometheus/rules.yml itself, not a copy."""
    for path in UNIT_TESTS:
        files = [(path.parent / name).resolve() for name in yaml.safe_load(path.read_text())["rule_files"]]
        assert files == [RULES.resolve()], path


def test_unit_test_files_all_end_in_yml() -> None:
    """A unit test file the *.yml glob would miss (say, .yaml) is never silently left out."""
    stray = [path.name for path in (DEPLOY / "prometheus" / "tests").iterdir() if path.suffix != ".yml"]
    assert stray == []
