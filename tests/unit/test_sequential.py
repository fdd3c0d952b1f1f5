"""The anytime-valid rate tests: the evidence is the mixture it claims, false alarms stay within α over every look."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from gates.sequential import RateTest, ShareTest, share_of_events


def test_the_evidence_is_the_beta_mixture_likelihood_ratio():
    # given a test and some outcomes
    test, yes, n = RateTest(0.02, 0.05, 0.01), 7, 120
    a, b = test.prior
    # when the mixture is integrated numerically over (tolerated, 1]
    weight = stats.beta.sf(0.02, a, b)
    mixture, _ = integrate.quad(lambda p: p**yes * (1 - p) ** (n - yes) * stats.beta.pdf(p, a, b) / weight, 0.02, 1)
    expected = math.log(mixture) - yes * math.log(0.02) - (n - yes) * math.log(0.98)
    # then the closed form agrees
    assert test.log_evidence(yes, n) == pytest.approx(expected, rel=1e-6)


def test_no_outcome_is_no_evidence_and_more_yes_is_more_evidence():
    test = RateTest(0.01, 0.04, 0.01)
    assert test.log_evidence(0, 0) == 0.0
    evidence = [test.log_evidence(k, 300) for k in range(0, 30, 3)]
    assert evidence == sorted(evidence)
    assert not test.rejects(3, 300) and test.rejects(20, 300)


@pytest.mark.parametrize("tolerated, effect", [(0.01, 0.04), (0.1, 0.1)])
def test_false_alarms_over_every_look_stay_within_alpha(tolerated, effect):
    # given streams whose rate is exactly the tolerated one, looked at every 5 outcomes up to 1,500
    alpha, streams, looks = 0.05, 400, range(5, 1501, 5)
    test = RateTest(tolerated, effect, alpha)
    rng = np.random.default_rng(11)
    yes = np.cumsum(rng.random((streams, 1500)) < tolerated, axis=1)
    # when each stream is judged at every look
    alarmed = sum(any(test.rejects(float(row[n - 1]), n) for n in looks) for row in yes)
    # then at most α of them ever alarm (with three standard errors of slack for 400 streams)
    assert alarmed / streams <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / streams)


def test_the_plan_catches_the_effect_with_the_asked_power_and_no_sooner():
    test = RateTest(0.01, 0.04, 0.001)
    plan = test.planned(0.95)
    needed = test.least_yes(plan)
    assert needed is not None and stats.binom.sf(needed - 1, plan, 0.05) >= 0.95
    before = test.least_yes(plan - 1)
    assert before is None or stats.binom.sf(before - 1, plan - 1, 0.05) < 0.95


def test_a_worse_rate_is_caught_by_the_plan_in_simulation():
    test = RateTest(0.02, 0.08, 0.005)
    plan = test.planned(0.95)
    rng = np.random.default_rng(5)
    yes = np.cumsum(rng.random((300, plan)) < 0.10, axis=1)
    caught = sum(any(test.rejects(float(row[n - 1]), n) for n in range(10, plan + 1, 10)) for row in yes)
    assert caught / 300 >= 0.93


def test_share_of_events_is_the_request_share_when_versions_behave_alike():
    assert share_of_events(0.1, 1.0) == pytest.approx(0.1)
    assert share_of_events(0.5, 3.0) == pytest.approx(0.75)
    [(_, above)] = ShareTest(1.0, 3.0, 0.01).tests(0.5)
    assert above.tolerated == pytest.approx(0.5) and above.tolerated + above.effect == pytest.approx(0.75)
    both = ShareTest(1.1, 2.0, 0.01, two_sided=True).tests(0.2)
    assert [d for d, _ in both] == ["above", "below"] and all(t.alpha == pytest.approx(0.005) for _, t in both)


@pytest.mark.parametrize("tolerated, effect, alpha", [(-0.1, 0.1, 0.01), (0.5, 0.6, 0.01), (0.1, 0.0, 0.01),
                                                      (0.1, 0.1, 1.0)])  # fmt: skip
def test_a_test_that_is_not_one_is_refused(tolerated, effect, alpha):
    with pytest.raises(ValueError, match="not a rate test"):
        RateTest(tolerated, effect, alpha)
