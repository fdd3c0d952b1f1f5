import json

from gates.report import COMMENT_MARKER, GateReport
from gates.rules import Baseline, champion_challenger, evaluate_gates, f1_minimum


def test_f1_minimum_passes_at_the_threshold_and_fails_below():
    assert f1_minimum({"f1": 0.6}, 0.6).passed
    result = f1_minimum({"f1": 0.59}, 0.6)
    assert not result.passed
    assert result.threshold == 0.6 and result.value == 0.59


def test_champion_challenger_without_production_passes_and_says_why():
    result = champion_challenger({"f1": 0.1}, None, 0.02)
    assert result.passed and "no production" in result.detail


def test_champion_challenger_allows_a_small_drop_and_refuses_a_large_one():
    baseline = Baseline("3", {"f1": 0.62})
    assert champion_challenger({"f1": 0.60}, baseline, 0.02).passed
    refused = champion_challenger({"f1": 0.59}, baseline, 0.02)
    assert not refused.passed
    assert refused.value == -0.03 and "v3" in refused.detail


def test_champion_challenger_fails_when_production_cannot_be_scored():
    result = champion_challenger({"f1": 0.9}, Baseline("2", None, "KeyError: 'tenure'"), 0.02)
    assert not result.passed and "tenure" in result.detail


def test_champion_challenger_can_be_disabled():
    assert champion_challenger({"f1": 0.1}, Baseline("2", {"f1": 0.9}), None).passed


def test_report_verdict_json_and_markdown():
    metrics = {"f1": 0.5, "precision": 0.4, "recall": 0.7, "roc_auc": 0.8, "accuracy": 0.75}
    rules = evaluate_gates(metrics, Baseline("1", {**metrics, "f1": 0.6}), f1_min=0.55, max_f1_drop=0.02)
    report = GateReport("m", "run1", "abc123", metrics, rules, Baseline("1", {**metrics, "f1": 0.6}))
    assert report.verdict == "failed"
    data = json.loads(report.to_json())
    assert [r["rule"] for r in data["rules"]] == ["f1_min", "max_f1_drop"]
    assert data["baseline"]["version"] == "1"
    markdown = report.to_markdown()
    assert markdown.startswith(COMMENT_MARKER)
    assert "❌ Gate failed" in markdown
    assert "| `f1_min` | f1 | 0.5500 | 0.5000 | ❌ fail |" in markdown
    assert "production v1" in markdown and "-0.1000" in markdown


def test_report_passes_when_every_rule_passes():
    metrics = {"f1": 0.7}
    report = GateReport("m", "r", "sha", metrics, evaluate_gates(metrics, None, 0.5, 0.02))
    assert report.passed and "✅ Gate passed" in report.to_markdown()
