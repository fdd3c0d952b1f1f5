"""deploy/prometheus: the rules pass promtool's checks and unit tests, and say what the on-call engineer needs."""

from __future__ import annotations

import json
import math
import re
from statistics import NormalDist

import pytest
import yaml

from gates.psi import PSI_FLOOR
from pipeline.core.errors import ConfigError
from pipeline.core.params_file import build_params, load_params

from .tools import API_METRICS, DEPLOY, ROOT, alerting_rules, load_yaml, rules, run, system_tool

RULES = DEPLOY / "prometheus" / "rules.yml"
UNIT_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))

# The alerts a rollback can cure (the version's own failures), for the version production serves (rules.yml's header).
ROLLBACK_ALERTS = {"ChurnApiHigh5xxRatio", "ChurnApiLatencyOverBudget"}
# And the version's signed live quality verdict (issue 30; tests/deploy/test_quality_alert.py): it relays a verdict
# `pipeline quality` judged with its own error budget, so the decision group's bound and z do not apply to it.
QUALITY_ROLLBACK_ALERTS = {"ModelLiveQualityFailed"}
# What asks for a retrain (the relay dispatches retrain.yml): live quality short of the gate figure.
RETRAIN_ALERTS = {"ModelLiveQualityLow"}
# What a rollback never cures (the previous version sees the same clients and inputs): a person looks.
PAGE_ALERTS = {"ChurnApiHigh4xxRatio", "ChurnApiFeatureDrift", "ChurnApiFeatureDriftWarning"}
# The rollback alerts' evidence: a lower confidence bound with z for alpha over a day of looks.
ALPHA, LOOK_S, MIN_REQUESTS = 0.01, 30, 200
TOLERATED = {"ChurnApiHigh5xxRatio": 0.01, "ChurnApiLatencyOverBudget": 0.05}
SLOW_S = 0.05  # per record, from the complete body to the answer (an api_decision_latency_seconds bound)


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
    """action=rollback on the version's own 5xx and slowness only, each joined to production's served version."""
    marked = {rule["alert"]: rule for rule in alerting_rules() if rule["labels"].get("action") == "rollback"}
    assert set(marked) == ROLLBACK_ALERTS | QUALITY_ROLLBACK_ALERTS
    for rule in marked.values():
        assert rule["labels"]["severity"] == "critical"
        assert "and on (environment, version) api:serving_version:workers" in rule["expr"]
        assert "rollback" in rule["annotations"]["runbook"]


def test_client_errors_and_drift_page_a_person_and_never_roll_back() -> None:
    """action=page on the 4xx and drift alerts, whose runbooks say a rollback does not cure them, and why."""
    actions = {rule["alert"]: rule["labels"].get("action") for rule in alerting_rules()}
    assert {name for name, action in actions.items() if action == "page"} == PAGE_ALERTS
    assert {name for name, action in actions.items() if action == "retrain"} == RETRAIN_ALERTS
    assert set(actions.values()) <= {"rollback", "page", "retrain", None}
    for rule in alerting_rules():
        if rule["alert"] in PAGE_ALERTS:
            runbook = rule["annotations"]["runbook"]
            assert runbook.startswith("Do not roll back for this: the previous version would"), rule["alert"]
            assert "pipeline rollback" not in runbook and "rollback relay" not in runbook, rule["alert"]
            assert "Nothing acts on" in rule["annotations"]["description"], rule["alert"]
    drift = [r for r in alerting_rules() if r["alert"] in PAGE_ALERTS and "Drift" in r["alert"]]
    assert all("retrain" in rule["annotations"]["runbook"].lower() for rule in drift)


def rollback_rules() -> dict[str, dict]:
    """The rollback alerts, by name."""
    return {rule["alert"]: rule for rule in alerting_rules() if rule["alert"] in ROLLBACK_ALERTS}


def recorded(name: str) -> dict:
    """The recording rule that records `name`."""
    (rule,) = [rule for group in rules()["groups"] for rule in group["rules"] if rule.get("record") == name]
    return rule


def test_z_is_bonferroni_for_alpha_over_a_day_of_looks() -> None:
    """z = 4.5 is z_(1 - alpha / looks) for alpha 0.01 and a look every 30 s for a day (2,880 looks)."""
    looks = 24 * 3600 // LOOK_S
    assert looks == 2880
    assert NormalDist().inv_cdf(1 - ALPHA / looks) == pytest.approx(4.5, abs=0.01)
    (group,) = [g for g in rules()["groups"] if set(rollback_rules()) <= {r.get("alert") for r in g["rules"]}]
    assert group["interval"] == f"{LOOK_S}s"  # the looks the z pays for, whatever the global evaluation interval
    header = RULES.read_text()
    assert "2,880" in header and "z = 4.5" in header and "Bonferroni" in header


@pytest.mark.parametrize("alert", sorted(ROLLBACK_ALERTS))
def test_rollback_alerts_fire_on_a_lower_bound_above_the_tolerated_rate(alert: str) -> None:
    """Lower bound p - 4.5 sqrt(p (1 - p) / n) over 10 m above the tolerated rate, with n >= 200 counted requests."""
    rule = rollback_rules()[alert]
    share = {"ChurnApiHigh5xxRatio": "api:decision_error_ratio", "ChurnApiLatencyOverBudget": "api:decision_slow_ratio"}
    bound = f"{share[alert]}_lower_bound:10m"
    assert re.match(rf"{re.escape(bound)} > ([0-9.]+)\n", rule["expr"])[1] == str(TOLERATED[alert])
    assert f"and on (environment, version) api:decision_requests:10m >= {MIN_REQUESTS}" in rule["expr"]
    p = f"{share[alert]}:10m"
    assert " ".join(recorded(bound)["expr"].split()) == f"{p} - 4.5 * sqrt({p} * (1 - {p}) / api:decision_requests:10m)"
    assert "for" not in rule  # every look is one of the 2,880 the bound's z pays for
    said = " ".join(rule["annotations"]["description"].split())
    assert "p - 4.5 * sqrt(p (1 - p) / n)" in said and "2,880" in said and "Bonferroni" in said
    assert f"at least {MIN_REQUESTS} requests" in said and f"{TOLERATED[alert]:.0%}".replace("%", " %") in said


def test_rollback_alerts_read_only_the_decision_counters() -> None:
    """The shares come from api_decision_*: one unit per request, per-client budget, per-record latency."""
    requests = recorded("api:decision_requests:10m")["expr"]
    assert 'increase(api_decision_requests_total{job="churn-api"}[10m])' in requests
    errors = recorded("api:decision_error_ratio:10m")["expr"]
    assert 'api_decision_events_total{job="churn-api", event="error"}[10m]' in errors
    slow = recorded("api:decision_slow_ratio:10m")["expr"]
    assert f'le="{SLOW_S}"' in slow and 'le="+Inf"' in slow
    for name in ("api:decision_requests:10m", "api:decision_error_ratio:10m", "api:decision_slow_ratio:10m"):
        expr = recorded(name)["expr"]
        assert "api_requests_total" not in expr and "api_request_latency" not in expr, name
        assert all(by == "environment, version" for by in re.findall(r"sum by \(([^)]*)\)", expr)), name


def test_slow_threshold_is_the_rollout_slow_threshold() -> None:
    """The slow share uses the rollout's per-record slow threshold, when params.yaml names one."""
    bake = load_yaml(ROOT / "params.yaml").get("rollout", {}).get("bake", {})
    if not isinstance(bake.get("slow"), dict) or "slow_ms" not in bake["slow"]:
        pytest.skip("params.yaml's rollout.bake has no slow.slow_ms")
    assert bake["slow"]["slow_ms"] / 1000 == SLOW_S
    assert str(SLOW_S) in " ".join(rollback_rules()["ChurnApiLatencyOverBudget"]["annotations"]["description"].split())


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
