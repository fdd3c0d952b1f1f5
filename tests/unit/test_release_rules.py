"""The rules rollout and watch judge: what acts, what is only shown, and how α is shared."""

import pytest

from gates.live_decisions import phase_outcome
from gates.live_rules import labels_of
from gates.rollout_report import Phase
from pipeline.core.churn_data import generate_churn
from pipeline.core.decision_simulation import bake_scenarios, rollout_scenarios, simulate
from pipeline.core.params_file import load_params
from pipeline.core.release_rules import BakeJudge, RolloutJudge

PARAMS = load_params().rollout


def counted(version, requests, errors=0, refused=0, positives=0, slow=0, four_xx=0):
    out = {
        ("api_decision_requests_total", labels_of({"version": version})): requests,
        ("api_decision_events_total", labels_of({"version": version, "event": "error"})): errors,
        ("api_decision_events_total", labels_of({"version": version, "event": "refused"})): refused,
        ("api_decision_events_total", labels_of({"version": version, "event": "positive"})): positives,
        ("api_decision_latency_seconds_bucket", labels_of({"version": version, "le": "0.05"})): requests - slow,
        ("api_decision_latency_seconds_bucket", labels_of({"version": version, "le": "+Inf"})): requests,
        ("api_requests_total", labels_of({"version": version, "endpoint": "/predict", "status": "200"})): requests,
        ("api_requests_total", labels_of({"version": version, "endpoint": "/predict", "status": "422"})): four_xx,
    }
    return out


def test_alpha_is_shared_by_every_rule_of_every_phase():
    judge = RolloutJudge(PARAMS, "3", "2")
    assert judge.alpha == pytest.approx(0.01 / (3 + 2 * 4))
    assert BakeJudge(PARAMS, "2").alpha == pytest.approx(0.01 / 2)


def test_a_bake_never_acts_on_client_errors_or_drift():
    # given production answering 4xx to half the requests and inputs nothing like its training data
    w = counted("2", 5000, four_xx=5000)
    w[("api_feature_values_total", labels_of({"version": "2", "feature": "Contract", "bin": "unseen"}))] = 5000
    w[("api_feature_expected_ratio", labels_of({"version": "2", "feature": "Contract", "bin": "Month"}))] = 1.0
    phase = Phase("bake", "bake", 100)
    # when the bake judges it
    looks = BakeJudge(PARAMS, "2").looks(w, phase)
    # then nothing fails and both are shown as paging only
    assert [look.result.rule for look in looks] == ["errors", "slow"] and not any(look.failed for look in looks)
    assert phase.figures["4xx per request (pages, never acts)"] == 0.5
    assert phase.figures["largest feature PSI (pages, never acts)"].startswith("Contract")


def test_a_bake_rolls_back_on_its_own_5xx_with_evidence_not_on_one_error():
    judge, phase = BakeJudge(PARAMS, "2"), Phase("bake", "bake", 100)
    one = judge.looks(counted("2", 10, errors=1), phase)
    assert not any(look.failed for look in one)  # 10 % of ten requests is no evidence
    many = judge.looks(counted("2", 600, errors=30), phase)
    assert [look.result.rule for look in many if look.failed] == ["errors"]


def test_a_canary_step_compares_with_production_in_the_same_window():
    judge, phase = RolloutJudge(PARAMS, "3", "2"), Phase("canary 50 %", "canary", 50)
    # the same 5xx rate on both sides (an outage of the cluster, not of the version): no abort
    alike = {**counted("3", 2000, errors=100, positives=540), **counted("2", 2000, errors=100, positives=540)}
    assert not any(look.failed for look in judge.step(alike, phase, planned=True))
    # the candidate alone failing: aborted on errors
    worse = {**counted("3", 2000, errors=100, positives=540), **counted("2", 2000, errors=5, positives=540)}
    assert [look.result.rule for look in judge.step(worse, phase, planned=True) if look.failed] == ["errors"]
    # far fewer positives than production: aborted on positives (either way)
    fewer = {**counted("3", 2000, positives=200), **counted("2", 2000, positives=540)}
    assert [look.result.rule for look in judge.step(fewer, phase, planned=True) if look.failed] == ["positives"]


def test_an_early_step_passes_at_its_duration_the_last_waits_for_its_plan():
    judge, phase = RolloutJudge(PARAMS, "3", "2"), Phase("canary", "canary", 10)
    w = {**counted("3", 50, positives=13), **counted("2", 450, positives=120)}
    assert phase_outcome(judge.step(w, phase, planned=False), 30, 30) == "pass"
    assert phase_outcome(judge.step(w, phase, planned=True), 30, 30) is None
    assert phase_outcome(judge.step(w, phase, planned=False), 10, 30) is None


@pytest.fixture(scope="module")
def pool():
    return (generate_churn(2000, 3)["Churn"] == "Yes").to_numpy()


def test_simulated_identical_candidates_and_healthy_bakes_are_left_alone(pool):
    # A small, seeded version of `make bench`'s table (1,000 runs each there).
    rollouts = simulate(PARAMS, rollout_scenarios(PARAMS)[0], runs=40, seed=1, pool=pool, rate_per_s=100)
    bakes = simulate(PARAMS, bake_scenarios(PARAMS)[0], runs=200, seed=2, pool=pool, bake=True)
    assert rollouts.acted == 0 and bakes.acted <= 2


def test_simulated_worse_candidates_are_caught(pool):
    worse = [s for s in rollout_scenarios(PARAMS) if s.worse]
    assert len(worse) >= 7  # one per rule that names an effect
    for number, scenario in enumerate(worse):
        outcome = simulate(PARAMS, scenario, runs=20, seed=10 + number, pool=pool, rate_per_s=100)
        assert outcome.acted >= 18, scenario.name
    for number, scenario in enumerate(s for s in bake_scenarios(PARAMS) if s.worse):
        outcome = simulate(PARAMS, scenario, runs=40, seed=30 + number, pool=pool, bake=True)
        assert outcome.acted >= 38, scenario.name
