"""The recent-outcomes gate, pure: which rows are the newest, and the paired rule on them."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from gates.bootstrap import HeldOutAnswers
from gates.evaluate import Production
from gates.recent_outcomes import RULE, Skipped, judge, split_newest, unscorable
from pipeline.core.config import GateParams

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def labelled(roles: list[str], entities: list[str | None]) -> pd.DataFrame:
    """Labelled predictions (gates/outcomes.py's LABELLED_COLUMNS), one minute apart, given out of order."""
    n = len(roles)
    frame = pd.DataFrame(
        {
            "prediction_id": [f"p{i}" for i in range(n)],
            "version": "1",
            "role": roles,
            "entity_id": pd.array(entities, dtype="string"),
            "time": [T0 + timedelta(minutes=i) for i in range(n)],
            "score": 0.5,
            "predicted": True,
            "actual": True,
        }
    )
    return frame.iloc[::-1].reset_index(drop=True)


def answers(y: np.ndarray, right: float, seed: int) -> HeldOutAnswers:
    """A model right on about `right` of the rows."""
    correct = np.random.default_rng(seed).random(len(y)) < right
    predicted = np.where(correct, y, ~y)
    return HeldOutAnswers(predicted, np.where(predicted, 0.8, 0.2))


Y = np.random.default_rng(7).random(400) < 0.3
LIMITS = (200, 0.0)  # min_rows, max_drop
BOOTSTRAP = (1000, 0.95, 42)  # samples, confidence, seed


def test_the_newest_rows_are_the_latest_answers_never_a_shadow_and_the_rest_drops_their_customers():
    # given: six labelled answers; the newest is a shadow's copy, c1 was answered early and late
    roles = ["production", "production", "canary", "production", "production", "shadow"]
    frame = labelled(roles, ["c1", "c2", "c3", None, "c1", "c9"])
    # when: the two newest are split off
    split = split_newest(frame, 2)
    # then: the two latest non-shadow answers, oldest first; the rest loses c1's earlier answer and says so
    assert list(split.newest["prediction_id"]) == ["p3", "p4"]
    assert sorted(split.rest["prediction_id"]) == ["p1", "p2", "p5"]
    assert split.same_entities == 1
    # and more rows asked than there are: every non-shadow answer is held out
    assert len(split_newest(frame, 100).newest) == 5


def test_a_candidate_worse_than_production_on_the_newest_rows_fails_naming_both():
    # given: on 400 newest rows, the candidate right on 70 %, production on 90 %
    production = Production("3", answers(Y, 0.9, 1))
    # when: judged with no drop allowed
    rule = judge("f1", Y, answers(Y, 0.7, 2), production, LIMITS, BOOTSTRAP)
    # then: it fails on the CI's lower bound, naming the rows and production
    assert rule.rule == RULE and not rule.passed and rule.value is not None and rule.value < 0
    assert rule.detail.startswith("on the newest 400 labelled rows: f1 ")
    assert "vs production v3" in rule.detail and "95% CI lower bound" in rule.detail


def test_a_candidate_that_beats_production_on_the_newest_rows_passes():
    production = Production("3", answers(Y, 0.6, 1))
    rule = judge("f1", Y, answers(Y, 0.95, 2), production, LIMITS, BOOTSTRAP)
    assert rule.passed and rule.value is not None and rule.value > 0


def test_the_same_answers_pass_only_when_a_drop_is_tolerated():
    # given: the candidate answers exactly as production does
    same = answers(Y, 0.8, 1)
    production = Production("3", same)
    # then: the difference is 0 in every resample: it does not beat production, yet is within a tolerated drop
    assert judge("f1", Y, same, production, (200, 0.0), BOOTSTRAP).passed  # 0 >= -0
    assert judge("f1", Y, same, production, (200, 0.02), BOOTSTRAP).passed


def test_too_few_rows_are_not_judged_and_pass_saying_so_with_the_rows_skipped():
    # given: 150 scorable rows, 30 skipped for a feature store reference, a far worse candidate
    y = Y[:150]
    rule = judge("f1", y, answers(y, 0.1, 2), Production("3", answers(y, 0.9, 1)), LIMITS, BOOTSTRAP, Skipped(30))
    # then: not judged, passed, the count and the minimum named
    assert rule.passed and rule.value is None
    assert rule.detail == "not judged (150 rows < 200); skipped 30 with a feature store reference for features"


def test_without_production_there_is_nothing_to_compare_and_a_production_that_cannot_answer_fails():
    assert judge("f1", Y, answers(Y, 0.7, 2), None, LIMITS, BOOTSTRAP).passed
    broken = Production("3", None, "artifact missing: gone")
    rule = judge("f1", Y, answers(Y, 0.7, 2), broken, LIMITS, BOOTSTRAP)
    assert not rule.passed and "production v3 could not be compared: artifact missing" in rule.detail


def test_a_candidate_that_cannot_answer_the_newest_rows_fails():
    rule = unscorable("f1", 0.0, 300, "run r failed on the test rows: ValueError: boom")
    assert rule.rule == RULE and not rule.passed and "cannot be scored on the newest 300" in rule.detail


def test_the_params_key_is_off_by_default_and_refuses_a_minimum_it_could_never_reach():
    assert GateParams().recent_outcomes is None
    on = GateParams(recent_outcomes={"rows": 300, "min_rows": 100, "max_drop": 0})
    assert on.recent_outcomes is not None and on.recent_outcomes.metric == "f1"
    with pytest.raises(ValidationError, match="min_rows \\(400\\) exceeds rows \\(300\\)"):
        GateParams(recent_outcomes={"rows": 300, "min_rows": 400})
    with pytest.raises(ValidationError, match="metric 'log_loss' is not one the gate recomputes"):
        GateParams(recent_outcomes={"metric": "log_loss"})
