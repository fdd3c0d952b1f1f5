"""The live quality rules in the pull request's policy diff: on, off, tightened, loosened."""

from gates.policy_diff import CHANGED, LOOSENED, TIGHTENED, rollout_changes
from pipeline.core.params_file import build_params


def rollout(**section) -> dict:
    return build_params({"rollout": section}).rollout.model_dump()


def test_default_params_have_no_quality_rule_and_change_nothing():
    assert rollout()["quality"] is None and rollout()["bake"]["quality"] is None
    assert rollout_changes(rollout(), rollout()) == []


def test_a_quality_rule_turned_on_tightens_and_turned_off_loosens():
    on = rollout(quality={"min_labelled": 300, "max_drop": 0.05}, bake={"quality": {"max_drop": 0.1}})
    changes = {c.key: (c.direction, c.message) for c in rollout_changes(rollout(), on)}
    assert changes == {
        "rollout.quality": (TIGHTENED, "turns on the rollout's quality rule (min_labelled 300, max_drop 0.05)"),
        "rollout.bake.quality": (
            TIGHTENED,
            "turns on the rollout's bake quality rule (min_labelled 200, max_drop 0.1)",
        ),
    }
    [off] = rollout_changes(on, rollout(quality={"min_labelled": 300, "max_drop": 0.05}))
    assert (off.key, off.direction, off.after) == ("rollout.bake.quality", LOOSENED, None)
    assert off.message == "turns off the rollout's bake quality rule (was min_labelled 200, max_drop 0.1)"


def test_quality_thresholds_read_a_larger_drop_as_looser_and_more_labels_as_tighter():
    base = rollout(bake={"quality": {"min_labelled": 200, "max_drop": 0.05}})
    outcomes = {"max_drop": 0.02, "min_labelled": 100, "max_looks": 60, "horizon_days": 60}
    current = rollout(bake={"quality": {"min_labelled": 500, "max_drop": 0.08}}, outcomes=outcomes)
    changes = {c.key: c.direction for c in rollout_changes(base, current)}
    assert changes == {
        "rollout.bake.quality.max_drop": LOOSENED,
        "rollout.outcomes.min_labelled": LOOSENED,
        "rollout.bake.quality.min_labelled": TIGHTENED,
        "rollout.outcomes.max_drop": TIGHTENED,
        "rollout.outcomes.horizon_days": CHANGED,
        "rollout.outcomes.max_looks": CHANGED,
    }


def test_a_quality_rule_is_turned_on_from_the_command_line():
    from pipeline.core.params_file import apply_overrides

    raw = apply_overrides({"rollout": {"bake": {"quality": None}}}, ["rollout.bake.quality.max_drop=0.1"])
    rule = build_params(raw).rollout.bake.quality
    assert rule is not None and rule.max_drop == 0.1
