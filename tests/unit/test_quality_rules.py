"""Live quality as the pipeline judges it: gate figures from the report, verdicts, rules on recorded figures."""

import json

import pandas as pd

from gates.bootstrap import Comparison
from gates.live_quality import GateFigure, LiveQuality, LookBudget
from pipeline.core.quality_rules import gate_figures, judge_recorded, judge_version, rule_count, training_rows
from pipeline.core.rollout_params import QualityRule

REPORT = {
    "confidence": 0.95,
    "metrics": {"f1": 0.62, "accuracy": 0.8, "custom": 3.0},
    "comparison": {"f1": {"candidate_ci": [0.58, 0.66]}},
}
BUDGET = LookBudget(alpha=0.05, max_looks=10, tests=2)


def live(point, upper, rows=1000):
    return LiveQuality(rows, rows // 4, BUDGET.confidence, {"f1": Comparison("f1", point, (point - 0.05, upper))})


def test_gate_figures_take_the_interval_when_the_gate_recorded_one():
    found = gate_figures(REPORT, ["f1", "accuracy", "roc_auc"])
    assert found == {"f1": GateFigure(0.62, (0.58, 0.66), 0.95), "accuracy": GateFigure(0.8)}
    assert gate_figures(None, ["f1"]) == {}


def test_rules_are_counted_for_the_look_budget():
    gate = gate_figures(REPORT, ["f1"])
    assert rule_count(["f1"], {"f1": 0.55}, gate, 0.05) == 2
    assert rule_count(["f1"], {"f1": None}, {}, 0.05) == 1  # nothing on: a budget of one


def test_a_version_far_below_its_gate_figure_fails_and_its_figures_say_why():
    gate = gate_figures(REPORT, ["f1"])
    judged = judge_version("3", ["production"], live(0.30, 0.36), gate, {"f1": 0.55}, 0.05, BUDGET, 1, 200)
    assert judged.verdict == "failed"
    assert "live_f1_min" in judged.reason and "live_f1_drop" in judged.reason
    figures = judged.figures("2026-03-01T00:00:00+00:00", None)
    assert figures["labelled"] == 1000 and figures["look"] == 1 and figures["max_looks"] == 10
    assert figures["metrics"]["f1"] == {"live": 0.3, "interval": [0.25, 0.36], "gate": 0.62,
                                        "gate_interval": [0.58, 0.66], "gate_confidence": 0.95}  # fmt: skip
    assert json.loads(json.dumps(figures)) == figures


def test_a_version_near_its_gate_passes_and_too_few_rows_is_inconclusive():
    gate = gate_figures(REPORT, ["f1"])
    assert judge_version("3", [], live(0.61, 0.66), gate, {"f1": 0.55}, 0.05, BUDGET, 1, 200).verdict == "passed"
    few = judge_version("3", [], live(0.1, 0.2, rows=50), gate, {"f1": 0.55}, 0.05, BUDGET, 1, 200)
    assert few.verdict == "inconclusive" and "not enough labelled rows (50 of the 200" in few.reason
    nothing_on = judge_version("3", [], live(0.1, 0.2), gate, {"f1": None}, None, BUDGET, 1, 200)
    assert nothing_on.verdict == "inconclusive" and "no rule is on" in nothing_on.reason


def figures(live_f1, upper, rows=400, gate=0.62, gate_interval=(0.58, 0.66)):
    return {"at": "2026-03-01", "labelled": rows, "confidence": 0.99,
            "metrics": {"f1": {"live": live_f1, "interval": [live_f1 - 0.05, upper], "gate": gate,
                               "gate_interval": list(gate_interval), "gate_confidence": 0.95}}}  # fmt: skip


def test_a_recorded_verdict_fails_a_rule_only_on_an_established_drop_with_enough_rows():
    rule = QualityRule(min_labelled=200, max_drop=0.05)
    failed = judge_recorded("failed", figures(0.30, 0.36), rule)
    assert failed.failed and "a drop is established" in failed.detail
    assert judge_recorded("failed", figures(0.55, 0.62), rule).outcome == "passed"
    assert judge_recorded("failed", figures(0.30, 0.36, rows=100), rule).outcome == "inconclusive"
    assert judge_recorded(None, None, rule).outcome == "inconclusive"
    # a wider tolerance lets the same figures pass
    assert not judge_recorded("failed", figures(0.30, 0.36), QualityRule(max_drop=0.5)).failed


def test_the_gate_uncertainty_widens_the_recorded_bound():
    rule = QualityRule(min_labelled=200, max_drop=0.02)
    # live 0.56 with upper bound 0.60 against a gate of 0.62: change -0.06, bound -0.02 exactly without gate noise
    exact = judge_recorded("failed", figures(0.56, 0.59, gate_interval=(0.62, 0.62)), rule)
    noisy = judge_recorded("failed", figures(0.56, 0.59, gate_interval=(0.52, 0.72)), rule)
    assert exact.failed and not noisy.failed


def labelled(*rows):
    return pd.DataFrame(rows, columns=["prediction_id", "role", "entity_id", "actual"])


def test_training_rows_take_logged_features_and_skip_feature_store_references_and_shadow_copies():
    rows = labelled(("p1", "production", "c1", True), ("p2", "shadow", "c1", True), ("p3", "canary", "c2", False),
                    ("p4", "production", "c3", False), ("p5", "production", None, True))  # fmt: skip
    features = {
        "p1": json.dumps({"tenure": 3, "Contract": "Month-to-month", "extra": 1}),
        "p2": json.dumps({"tenure": 3, "Contract": "Month-to-month"}),
        "p3": json.dumps({"tenure": 40, "customerID": "given"}),
        "p4": json.dumps({"feature_service": "churn_model", "entity_id": "c3"}),
        "p5": "not json",
    }
    found = training_rows(rows, features, ["customerID", "tenure", "Contract", "Churn"], "Churn", ("Yes", "No"),
                          "customerID")  # fmt: skip
    assert (found.from_feature_store, found.shadow, found.unreadable) == (1, 1, 1)
    assert found.frame.fillna("").to_dict("records") == [  # a missing feature: an empty cell
        {"customerID": "c1", "tenure": 3, "Contract": "Month-to-month", "Churn": "Yes"},
        {"customerID": "given", "tenure": 40, "Contract": "", "Churn": "No"},
    ]


def test_training_rows_of_nothing_have_the_data_columns():
    found = training_rows(labelled(), {}, ["a", "Churn"], "Churn", ("Yes", "No"), None)
    assert list(found.frame.columns) == ["a", "Churn"] and found.frame.empty


def test_training_rows_keep_one_row_per_customer_its_latest_labelled_answer():
    # given a customer that asked three times (a client repeating its own id) and another once
    rows = labelled(("p1", "production", "c1", False), ("p2", "production", "c1", False),
                    ("p3", "production", "c1", False), ("p4", "production", "c2", True))  # fmt: skip
    rows["time"] = pd.to_datetime(["2026-03-01", "2026-03-03", "2026-03-02", "2026-03-01"], utc=True)
    features = {p: json.dumps({"tenure": i}) for i, p in enumerate(["p1", "p2", "p3", "p4"])}
    # when they become training rows
    found = training_rows(rows, features, ["customerID", "tenure", "Churn"], "Churn", ("Yes", "No"), "customerID")
    # then c1 weighs one row, its latest answer (p2), and the two earlier ones are counted
    assert found.frame.to_dict("records") == [
        {"customerID": "c1", "tenure": 1, "Churn": "No"},
        {"customerID": "c2", "tenure": 3, "Churn": "Yes"},
    ]
    assert found.repeated == 2


def test_a_recorded_verdict_acts_only_when_it_failed_within_its_look_budget():
    rule = QualityRule(min_labelled=200, max_drop=0.05)
    # given figures whose bound establishes a drop
    dropped = figures(0.30, 0.36)
    # when the verdict recorded beside them is not "failed" (a look past the budget records inconclusive)
    for verdict in ("inconclusive", "passed", None):
        check = judge_recorded(verdict, dropped, rule)
        # then nothing acts, and it says why
        assert not check.failed and "not acted on" in check.detail
    # and figures of a look past the budget are not judged even beside a failed verdict
    past = {**dropped, "look": 31, "max_looks": 30}
    assert judge_recorded("failed", past, rule).outcome == "inconclusive"
    assert judge_recorded("failed", {**dropped, "look": 30, "max_looks": 30}, rule).failed


def test_a_spent_budget_never_turns_a_recorded_failure_into_inconclusive():
    from pipeline.core.quality_rules import keep_recorded_failure

    # given a version whose look 31 of a 30-look budget judges nothing
    live = LiveQuality(400, 100, 0.999, {})
    past = judge_version("7", ["production"], live, {}, {"f1": 0.5}, 0.05, LookBudget(0.05, 30, 1), 31, 200)
    assert past.verdict == "inconclusive"
    # when its recorded verdict is failed, that failure is kept and said so
    kept = keep_recorded_failure(past, "failed", "2026-03-01T00:00:00+00:00")
    assert kept.verdict == "failed" and "the failed verdict of 2026-03-01" in kept.reason and "budget" in kept.reason
    # and a recorded pass, or a look within the budget, is judged as it is
    assert keep_recorded_failure(past, "passed", None).verdict == "inconclusive"
    within = judge_version("7", ["production"], live, {}, {"f1": 0.5}, 0.05, LookBudget(0.05, 30, 1), 30, 200)
    assert keep_recorded_failure(within, "failed", None).verdict == "inconclusive"
