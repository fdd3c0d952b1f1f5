from gates.policy_diff import CHANGED, LOOSENED, TIGHTENED, policy_changes, rollout_changes
from pipeline.core.params_file import build_params


def gates(**section) -> dict:
    return build_params({"gates": section}).gates.model_dump()


def messages(base: dict, current: dict) -> list[tuple[str, str]]:
    return [(c.direction, c.message) for c in policy_changes(base, current)]


def test_the_same_gates_change_nothing():
    assert policy_changes(gates(), gates()) == []


def test_a_lowered_floor_is_loosened_and_named_in_words():
    [change] = policy_changes(gates(), gates(metrics={"f1": {"min": 0.30, "max_drop": 0.02}}))
    assert (change.key, change.before, change.after, change.direction) == ("gates.metrics.f1.min", 0.55, 0.30, LOOSENED)
    assert change.message == "lowers the F1 floor from 0.55 to 0.3"


def test_each_threshold_has_a_direction():
    base = gates(slices={"columns": ["Contract"], "min_rows": 100, "max_f1_drop": 0.05})
    current = gates(
        confidence=0.99,
        bootstrap_samples=2000,
        metrics={"f1": {"min": 0.6, "max_drop": None}, "roc_auc": {"min": 0.8}},
        slices={"columns": ["tenure"], "min_rows": 200, "max_f1_drop": 0.05},
        allow_breaking_schema=True,
        drift={"max_psi": 0.2},
    )
    assert messages(base, current) == [
        (LOOSENED, "turns off the allowed F1 drop against production (was 0.02)"),
        (LOOSENED, "stops gating slices of 'Contract'"),
        (LOOSENED, "widens the smallest slice size gated from 100 to 200"),
        (LOOSENED, "allows input schema changes that break API clients"),
        (TIGHTENED, "raises the F1 floor from 0.55 to 0.6"),
        (TIGHTENED, "adds a ROC AUC floor of 0.8"),
        (TIGHTENED, "changes the confidence level from 0.95 to 0.99"),
        (TIGHTENED, "gates slices of 'tenure'"),
        (TIGHTENED, "turns on the PSI limit per numeric column at 0.2"),
        (CHANGED, "uses 2000 bootstrap resamples instead of 1000"),
    ]


def test_dropping_the_interval_or_a_metric_gate_is_loosening():
    assert messages(gates(), gates(confidence=None)) == [
        (LOOSENED, "compares point estimates instead of confidence intervals")
    ]
    base = gates(metrics={"f1": {"min": 0.55, "max_drop": 0.02}, "recall": {"min": 0.5}})
    assert messages(base, gates()) == [(LOOSENED, "removes the recall floor (was 0.5)")]


def test_round_one_params_files_compare_with_the_new_shape():
    old = build_params({"gates": {"f1_min": 0.55, "max_f1_drop": 0.02}}).gates.model_dump()
    assert policy_changes(old, gates()) == []


def test_rollout_rules_read_a_larger_tolerance_or_effect_as_looser_and_more_power_as_tighter():
    base = {"alpha": 0.01, "power": 0.95, "shadow": {"disagreement": {"tolerated": 0.01, "effect": 0.04}},
            "step_rules": {"errors": {"effect_ratio": 4, "min_rate": 0.02}}}  # fmt: skip
    current = {"alpha": 0.01, "power": 0.99, "shadow": {"disagreement": {"tolerated": 0.02, "effect": 0.04}},
               "step_rules": {"errors": {"effect_ratio": 4, "min_rate": 0.05}}}  # fmt: skip
    changes = {c.key: c.direction for c in rollout_changes(base, current)}
    assert changes == {
        "rollout.shadow.disagreement.tolerated": LOOSENED,
        "rollout.step_rules.errors.min_rate": LOOSENED,
        "rollout.power": TIGHTENED,
    }


def test_the_newest_outcomes_rule_on_off_and_its_thresholds_in_the_policy_diff():
    # given the default gates (no recent_outcomes rule) and the same with the rule on
    on = gates(recent_outcomes={"rows": 500, "min_rows": 200, "max_drop": 0.0})
    # then turning it on tightens, turning it off loosens
    [turned_on] = policy_changes(gates(), on)
    assert (turned_on.key, turned_on.direction) == ("gates.recent_outcomes", TIGHTENED)
    [turned_off] = policy_changes(on, gates())
    assert (turned_off.key, turned_off.direction, turned_off.after) == ("gates.recent_outcomes", LOOSENED, None)
    # and a larger allowed drop, or more rows needed before it judges, loosens it
    looser = gates(recent_outcomes={"rows": 500, "min_rows": 400, "max_drop": 0.05})
    changes = {c.key: c.direction for c in policy_changes(on, looser)}
    assert changes == {"gates.recent_outcomes.max_drop": LOOSENED, "gates.recent_outcomes.min_rows": LOOSENED}
