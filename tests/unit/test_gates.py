import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from api.model.schema import FeatureSpec as Field
from gates.bootstrap import METRICS, Comparison, HeldOutAnswers, paired_bootstrap, resample_weights
from gates.evaluate import GateResult, Production, evaluate
from gates.report import COMMENT_MARKER, GateReport
from gates.rules import Baseline, metric_floor, non_inferiority
from gates.schema_diff import compare_schemas
from gates.slices import slices_of
from pipeline.core.config import GateParams
from pipeline.core.params_file import build_params

SKLEARN = {"f1": f1_score, "precision": precision_score, "recall": recall_score, "accuracy": accuracy_score}


def answers(n: int = 1400, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, HeldOutAnswers]:
    """Labels and a model's answers: scores that separate the classes, with ties (rounded)."""
    rng = np.random.default_rng(seed)
    y = np.random.default_rng(99).random(n) < 0.27
    score = np.clip(np.round(0.25 + 0.4 * y + rng.normal(0, 0.2 + noise, n), 2), 0, 1)
    return y, HeldOutAnswers(score >= 0.5, score)


# the bootstrap


def test_each_resampled_metric_equals_scikit_learn_with_the_draw_counts_as_weights():
    y, model = answers()
    weights = next(resample_weights(len(y), 4, seed=3))
    for name, metric in SKLEARN.items():
        for w in weights:
            ours = METRICS[name](w[None, :], y, model)[0]
            assert ours == pytest.approx(metric(y, model.predicted, sample_weight=w), abs=1e-12)
    for w in weights:
        assert METRICS["roc_auc"](w[None, :], y, model)[0] == pytest.approx(
            roc_auc_score(y, model.score, sample_weight=w), abs=1e-12
        )


def test_resamples_draw_every_row_count_once_per_row_and_are_seeded():
    chunks = list(resample_weights(rows=50, samples=7, seed=1))
    weights = np.vstack(chunks)
    assert weights.shape == (7, 50) and (weights.sum(axis=1) == 50).all()
    assert np.array_equal(weights, np.vstack(list(resample_weights(50, 7, 1))))
    assert not np.array_equal(weights, np.vstack(list(resample_weights(50, 7, 2))))


def test_chunking_does_not_change_the_resamples(monkeypatch):
    whole = np.vstack(list(resample_weights(100, 30, 5)))
    monkeypatch.setattr("gates.bootstrap.CHUNK_CELLS", 700)  # 7 resamples per chunk
    chunked = list(resample_weights(100, 30, 5))
    assert len(chunked) == 5 and np.array_equal(np.vstack(chunked), whole)


def test_a_model_against_itself_has_delta_zero_inside_a_zero_interval():
    y, model = answers()
    result = paired_bootstrap(y, model, model, list(METRICS), 1000, 0.95, seed=42)
    for c in result.values():
        assert c.delta == 0 and c.delta_ci == (0.0, 0.0)
        assert c.candidate_ci[0] < c.candidate < c.candidate_ci[1]


def test_pairing_makes_the_interval_of_a_difference_narrower_than_either_metric():
    y, a = answers(seed=1)
    _, b = answers(seed=1, noise=0.02)
    f1 = paired_bootstrap(y, a, b, ["f1"], 1000, 0.95, seed=7)["f1"]
    width = f1.delta_ci[1] - f1.delta_ci[0]
    assert width < (f1.candidate_ci[1] - f1.candidate_ci[0]) / 2
    assert f1.delta_ci[0] <= f1.delta <= f1.delta_ci[1]


def test_the_same_seed_gives_the_same_intervals_and_confidence_null_gives_none():
    y, a = answers(seed=1)
    _, b = answers(seed=2)
    first = paired_bootstrap(y, a, b, list(METRICS), 500, 0.9, seed=11)
    assert first == paired_bootstrap(y, a, b, list(METRICS), 500, 0.9, seed=11)
    point = paired_bootstrap(y, a, b, ["f1"], 500, None, seed=11)["f1"]
    assert point.delta_ci is None and point.candidate_ci is None
    assert point.delta == pytest.approx(f1_score(y, a.predicted) - f1_score(y, b.predicted))


def test_a_thousand_resamples_of_every_metric_take_well_under_a_second():
    y, a = answers(n=1409, seed=1)
    _, b = answers(n=1409, seed=2)
    started = time.perf_counter()
    paired_bootstrap(y, a, b, list(METRICS), 1000, 0.95, seed=0)
    # a guard against an accidental per-resample Python loop, not a benchmark: that would take ~10x this
    assert time.perf_counter() - started < 5


# rules


def test_the_floor_decides_on_the_point_estimate_and_reports_its_interval():
    ok = metric_floor(Comparison("f1", 0.60, (0.57, 0.63)), 0.60)
    assert ok.passed and "CI 0.5700–0.6300" in ok.detail
    low = metric_floor(Comparison("f1", 0.59, (0.56, 0.62)), 0.60)
    assert not low.passed and low.rule == "f1_min" and low.value == 0.59


def test_non_inferiority_passes_on_the_lower_bound_of_the_delta_interval():
    baseline = Baseline("3", {"f1": 0.62})
    near = Comparison("f1", 0.61, None, 0.62, -0.01, (-0.019, 0.001))
    assert non_inferiority(near, baseline, 0.02, 0.95).passed
    noisy = Comparison("f1", 0.62, None, 0.62, 0.0, (-0.025, 0.025))
    refused = non_inferiority(noisy, baseline, 0.02, 0.95)
    assert not refused.passed and refused.value == -0.025 and "v3" in refused.detail
    point = Comparison("f1", 0.61, None, 0.62, -0.01, None)
    assert non_inferiority(point, baseline, 0.02, None).value == -0.01


def test_a_negative_max_drop_asks_for_an_established_gain_so_an_identical_candidate_does_not_beat_production():
    baseline = Baseline("3", {"f1": 0.62})
    # given a candidate identical to production (every paired resample's delta is 0), held to a gain of 0.001
    same = Comparison("f1", 0.62, None, 0.62, 0.0, (0.0, 0.0))
    refused = non_inferiority(same, baseline, -0.001, 0.95)
    # then it does not beat production, and the report says what it had to reach
    assert not refused.passed and refused.threshold == 0.001 and "< +0.001" in refused.detail
    # and a candidate whose whole interval lies above that gain does
    better = Comparison("f1", 0.65, None, 0.62, 0.03, (0.004, 0.05))
    assert non_inferiority(better, baseline, -0.001, 0.95).passed


def test_non_inferiority_without_production_passes_and_unscorable_production_fails_with_the_reason():
    c = Comparison("f1", 0.1, None)
    assert non_inferiority(c, None, 0.02, 0.95).passed
    failed = non_inferiority(c, Baseline("2", None, "lacks column 'tenure'"), 0.02, 0.95)
    assert not failed.passed and "tenure" in failed.detail


# slices


def test_categorical_slices_per_value_numeric_ones_per_quartile_and_missing_last():
    frame = pd.DataFrame(
        {
            "plan": ["b", "a", "b", None, "a", "a", "c", "b"] * 5,
            "tenure": [*np.arange(39.0), np.nan],  # 39 distinct values: quartile bins
            "senior": [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0] * 5,  # two values: one slice each
        }
    )
    plan = slices_of(frame, "plan")
    assert [s.label for s in plan] == ["plan = a", "plan = b", "plan = c", "plan (missing)"]
    assert [int(s.rows.sum()) for s in plan] == [15, 15, 5, 5]
    tenure = slices_of(frame, "tenure")
    assert [s.label for s in tenure] == [
        "tenure < 9.5", "9.5 ≤ tenure < 19", "19 ≤ tenure < 28.5", "tenure ≥ 28.5", "tenure (missing)"
    ]  # fmt: skip
    assert [int(s.rows.sum()) for s in tenure] == [10, 9, 10, 10, 1]
    assert [s.label for s in slices_of(frame, "senior")] == ["senior = 0", "senior = 1"]


# schema


def test_schema_changes_that_break_clients_and_those_that_do_not():
    production = [Field("tenure", "double", True), Field("plan", "string", True), Field("age", "long", False)]
    candidate = [Field("plan", "long", True), Field("age", "double", True), Field("region", "string", False)]
    diff = compare_schemas(production, candidate)
    assert diff.removed == ["tenure"]
    assert diff.added == [{"name": "region", "type": "string", "required": False}]
    assert {r["name"]: r["breaking"] for r in diff.retyped} == {"plan": True, "age": False}  # long -> double widens
    assert diff.now_required == ["age"]
    assert diff.breaking == ["removes field 'tenure'", "changes 'plan' from string to long", "makes 'age' required"]
    assert compare_schemas(production, [*production, Field("region", "string", False)]).breaking == []
    assert compare_schemas(production, [*production, Field("region", "string", True)]).breaking == [
        "adds required field 'region'"
    ]


# evaluate + report


def gates(**changes) -> GateParams:
    return build_params({"gates": {"bootstrap_samples": 200, **changes}}).gates


def gate(params: GateParams, production: Production | None, schema=None, seed=0) -> GateResult:
    y, cand = answers(seed=1)
    frame = pd.DataFrame({"plan": np.where(np.arange(len(y)) % 3 == 0, "basic", "premium")})
    return evaluate(params, seed, y, frame, cand, {"f1": 0.0, "latency": 3.0}, production, schema)


def test_a_slice_that_regresses_fails_and_is_named_while_small_slices_are_shown_not_gated():
    y, cand = answers(seed=1)
    basic = np.arange(len(y)) % 3 == 0
    # production is the candidate, except much better on the "basic" slice
    better = HeldOutAnswers(np.where(basic, y, cand.predicted), np.where(basic, y.astype(float), cand.score))
    result = gate(gates(slices={"columns": ["plan"], "min_rows": 100}), Production("4", better))
    rule = next(r for r in result.rules if r.rule == "slice_f1_drop[plan]")
    assert not rule.passed and "plan = basic" in rule.detail and "plan = premium" not in rule.detail
    shown = gate(gates(slices={"columns": ["plan"], "min_rows": 10_000}), Production("4", better))
    assert all(not s.gated for s in shown.slices) and len(shown.slices) == 2
    assert next(r for r in shown.rules if r.rule == "slice_f1_drop[plan]").passed


def test_any_logged_metric_can_be_gated_on_its_logged_value():
    result = gate(gates(metrics={"latency": {"min": 5}}), None)
    [rule] = [r for r in result.rules if r.metric == "latency"]
    assert not rule.passed and rule.value == 3.0 and result.comparisons["latency"].candidate_ci is None


def test_a_breaking_schema_fails_unless_allowed_and_then_says_so():
    diff = compare_schemas([Field("tenure", "double", True)], [])
    _, cand = answers(seed=1)
    refused = gate(gates(), Production("2", cand), diff)
    assert not refused.passed and "removes field 'tenure'" in refused.rules[-1].detail
    allowed = gate(gates(allow_breaking_schema=True), Production("2", cand), diff)
    assert allowed.passed and "ALLOWED" in allowed.rules[-1].detail


def test_the_report_is_deterministic_leads_with_the_verdict_and_what_changed_and_charts_in_mermaid():
    _, prod = answers(seed=2)
    params = gates(slices={"columns": ["plan"]})

    def report() -> GateReport:
        return GateReport("m", "run1", "abc123", gate(params, Production("1", prod)), 0.95, 200, [])

    first = report()
    assert first.to_json() == report().to_json() and first.to_markdown() == report().to_markdown()
    data = json.loads(first.to_json())
    assert set(data["comparison"]["f1"]) == {"candidate", "candidate_ci", "production", "delta", "ci_low", "ci_high"}
    assert (
        data["comparison"]["f1"]["ci_low"] <= data["comparison"]["f1"]["delta"] <= data["comparison"]["f1"]["ci_high"]
    )
    assert {s["slice"] for s in data["slices"]} == {"plan = basic", "plan = premium"}
    assert data["schema"] is None and data["policy_changes"] == []
    markdown = first.to_markdown()
    assert markdown.startswith(COMMENT_MARKER + "\n## ")
    assert markdown.index("**What changed**") < markdown.index("```mermaid") < markdown.index("### Rules")
    assert markdown.count("```mermaid\nxychart-beta") == 3  # metrics, Δ with CI, slices
    assert '"plan = basic"' in markdown and "gate policy: unchanged from the base branch" in markdown


def test_the_report_renders_when_production_lacks_a_gated_logged_metric():
    y, cand = answers(seed=1)
    _, prod = answers(seed=2)
    frame = pd.DataFrame({"plan": ["basic"] * len(y)})
    logged = {"f1": 0.0, "coverage": 0.9}  # a share, so it is charted; logged on the candidate only
    result = evaluate(gates(metrics={"coverage": {"min": 0.5}}), 0, y, frame, cand, logged, Production("1", prod))
    assert result.comparisons["coverage"].production is None
    markdown = GateReport("m", "run1", "abc123", result, 0.95, 200, []).to_markdown()
    assert 'title "Candidate"' in markdown and "vs production v1 (line)" not in markdown


def test_legacy_f1_keys_still_set_the_f1_gate():
    assert build_params({"gates": {"f1_min": 0.7}}).gates.metrics["f1"].min == 0.7
    assert build_params({"gates": {"max_f1_drop": None}}).gates.metrics["f1"].max_drop is None
