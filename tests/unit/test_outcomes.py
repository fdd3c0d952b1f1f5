"""Delayed outcomes joined to the prediction log: each refusal counted and named, the join idempotent."""

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from gates.outcomes import LABELLED_COLUMNS, REASONS, join, merge_labels

T0 = pd.Timestamp("2026-03-01T12:00:00", tz="UTC")
HORIZON = timedelta(days=30)


def log(*rows):
    """Predictions from (prediction_id, entity_id, days after T0, version, role, score)."""
    return pd.DataFrame(
        [
            {
                "prediction_id": pid,
                "time": T0 + pd.Timedelta(days=days),
                "entity_id": entity,
                "version": version,
                "role": role,
                "score": score,
                "label": "Yes" if score >= 0.5 else "No",
            }
            for pid, entity, days, version, role, score in rows
        ]
    )


def by_id(*pairs):
    return pd.DataFrame({"prediction_id": [p for p, _ in pairs], "outcome": [o for _, o in pairs]})


def by_entity(*triples):
    return pd.DataFrame(
        {
            "entity_id": [e for e, _, _ in triples],
            "observed_at": [T0 + pd.Timedelta(days=d) for _, d, _ in triples],
            "outcome": [o for _, _, o in triples],
        }
    )


LOG = log(
    ("p1", "c1", 0, "3", "production", 0.9),
    ("p2", "c1", 0, "4", "shadow", 0.2),
    ("p3", "c1", 0, "4", "canary", 0.6),
    ("p4", "c2", 1, "3", "production", 0.1),
    ("p5", None, 2, "3", "production", 0.7),
)


def labelled_ids(result):
    return sorted(result.labelled["prediction_id"])


def test_an_outcome_by_id_labels_exactly_that_prediction_with_both_sides_as_bool():
    result = join(LOG, by_id(("p4", "Yes"), ("p5", "No")), HORIZON, "Yes")
    rows = result.labelled.set_index("prediction_id")
    assert labelled_ids(result) == ["p4", "p5"]
    assert rows.loc["p4", "actual"] and not rows.loc["p4", "predicted"]
    assert not rows.loc["p5", "actual"] and rows.loc["p5", "predicted"]
    assert rows.loc["p4", "version"] == "3" and rows.loc["p4", "score"] == 0.1
    assert result.used == 2 and result.unlabelled == 3
    assert all(n == 0 for n in result.unused.values())


def test_an_outcome_by_entity_labels_every_role_that_answered_for_the_customer():
    result = join(LOG, by_entity(("c1", 10, "Yes")), HORIZON, "Yes")
    assert labelled_ids(result) == ["p1", "p2", "p3"]
    assert set(result.labelled["role"]) == {"production", "shadow", "canary"}
    assert result.labelled["actual"].all() and result.used == 1


@pytest.mark.parametrize(
    ("days", "joined"),
    [(0, True), (30, True), (30.0001, False), (-0.0001, False)],
)
def test_the_horizon_includes_both_ends(days, joined):
    # given one prediction at T0, an outcome `days` later
    result = join(log(("p", "c", 0, "3", "production", 0.5)), by_entity(("c", days, "No")), HORIZON, "Yes")
    # then it joins exactly when 0 <= days <= 30
    assert (len(result.labelled) == 1) == joined
    if not joined:
        expected = "before_prediction" if days < 0 else "no_prediction_in_horizon"
        assert result.unused[expected] == 1 and result.examples[expected][0].startswith("entity:c@")


def test_an_entity_never_logged_or_logged_too_long_ago_has_no_prediction_in_horizon():
    result = join(LOG, by_entity(("nobody", 1, "Yes"), ("c2", 40, "Yes")), HORIZON, "Yes")
    assert result.labelled.empty and result.unused["no_prediction_in_horizon"] == 2


def test_an_entity_outcome_before_its_only_prediction_is_before_prediction():
    result = join(LOG, by_entity(("c2", 0.5, "Yes")), HORIZON, "Yes")
    assert result.unused["before_prediction"] == 1 and result.labelled.empty


def test_a_prediction_without_entity_is_reachable_by_id_only():
    result = join(LOG, by_entity(("None", 3, "Yes")), HORIZON, "Yes")
    assert result.labelled.empty and result.unused["no_prediction_in_horizon"] == 1


def test_an_unknown_id_is_counted_and_named():
    result = join(LOG, by_id(("p1", "Yes"), ("ghost", "No")), HORIZON, "Yes")
    assert result.unused["unknown_id"] == 1 and result.examples["unknown_id"] == ("id:ghost",)
    assert labelled_ids(result) == ["p1"]


def test_an_outcome_by_id_observed_before_the_prediction_is_refused():
    labels = by_id(("p4", "Yes"), ("p1", "No"))
    labels["observed_at"] = [T0, T0 + pd.Timedelta(days=5)]  # p4 was made a day after T0
    result = join(LOG, labels, HORIZON, "Yes")
    assert result.unused["before_prediction"] == 1 and result.examples["before_prediction"] == ("id:p4",)
    assert labelled_ids(result) == ["p1"]


def test_the_same_label_twice_is_used_once():
    result = join(LOG, by_id(("p1", "Yes"), ("p1", "Yes")), HORIZON, "Yes")
    assert labelled_ids(result) == ["p1"]
    assert result.used == 1 and result.unused["duplicate"] == 1


def test_an_id_label_repeating_what_the_entity_label_said_is_a_duplicate():
    labels = pd.concat([by_entity(("c1", 5, "Yes")), by_id(("p2", "Yes"))], ignore_index=True)
    result = join(LOG, labels, HORIZON, "Yes")
    assert labelled_ids(result) == ["p1", "p2", "p3"]
    assert result.used == 1 and result.unused["duplicate"] == 1


def test_different_outcomes_for_one_prediction_label_none_of_them():
    # given p2 labelled Yes by its id and No through its customer's outcome
    labels = pd.concat([by_id(("p2", "Yes")), by_entity(("c1", 5, "No"))], ignore_index=True)
    result = join(LOG, labels, HORIZON, "Yes")
    # then p2 stays unlabelled; the entity outcome still labels p1 and p3
    assert labelled_ids(result) == ["p1", "p3"]
    assert result.conflicted_predictions == 1 and result.examples["conflicting"] == ("p2",)
    assert result.unused["conflicting"] == 1 and result.used == 1


def test_two_observations_disagreeing_on_a_prediction_leave_it_unlabelled():
    # given c1 observed staying (day 5) then leaving (day 20): both within the horizon of p1..p3
    result = join(LOG, by_entity(("c1", 5, "No"), ("c1", 20, "Yes")), HORIZON, "Yes")
    assert result.labelled.empty and result.conflicted_predictions == 3
    assert result.unused["conflicting"] == 2


def test_every_outcome_row_is_accounted_for_once():
    labels = pd.concat(
        [
            by_id(("p1", "Yes"), ("p1", "Yes"), ("ghost", "No"), (None, "No")),
            by_entity(("c1", 5, "Yes"), ("c2", 0.5, "No"), ("c9", 3, "No")),
            pd.DataFrame({"prediction_id": ["p4"], "outcome": [None]}),
        ],
        ignore_index=True,
    )
    result = join(LOG, labels, HORIZON, "Yes")
    assert result.used + sum(result.unused.values()) == len(labels)
    assert set(result.unused) == set(REASONS)
    assert result.unused["incomplete"] == 2 and result.unused["unknown_id"] == 1
    assert result.unlabelled == len(LOG) - len(result.labelled)


def test_feeding_the_same_outcomes_twice_labels_the_same_set():
    rng = np.random.default_rng(3)
    n = 300
    rows = [
        (f"p{i}", f"c{rng.integers(60)}", float(rng.uniform(0, 60)), "3", "production", rng.random()) for i in range(n)
    ]
    predictions = log(*rows)
    labels = pd.concat(
        [
            by_entity(*[(f"c{e}", float(rng.uniform(0, 90)), rng.choice(["Yes", "No"])) for e in range(60)]),
            by_id(*[(f"p{i}", rng.choice(["Yes", "No"])) for i in rng.choice(n, 80)]),
        ],
        ignore_index=True,
    )
    once = join(predictions, labels, HORIZON, "Yes")
    twice = join(predictions, pd.concat([labels, labels.sample(frac=1, random_state=1)]), HORIZON, "Yes")
    pd.testing.assert_frame_equal(once.labelled, twice.labelled)
    assert twice.unused["duplicate"] == once.unused["duplicate"] + len(labels)
    assert twice.used == once.used and not once.labelled.empty


def test_merging_the_same_file_twice_adds_nothing_and_loses_nothing():
    first = pd.concat([by_id(("p1", "Yes"), ("p4", "No")), by_entity(("c1", 5, "Yes"))], ignore_index=True)
    merged, counts = merge_labels(first.iloc[:0], first)
    again, counts_again = merge_labels(merged, first)
    assert counts == {"added": 3, "duplicate": 0, "conflicting": 0, "incomplete": 0}
    assert counts_again == {"added": 0, "duplicate": 3, "conflicting": 0, "incomplete": 0}
    pd.testing.assert_frame_equal(again, merged)
    assert len(merged) == 3


def test_merging_keeps_a_contradiction_for_the_join_to_refuse():
    existing = by_id(("p1", "Yes"))
    merged, counts = merge_labels(existing, by_id(("p1", "No"), ("p1", "No"), (None, "Yes")))
    assert counts == {"added": 1, "duplicate": 1, "conflicting": 1, "incomplete": 1}
    result = join(LOG, merged, HORIZON, "Yes")
    assert result.labelled.empty and result.conflicted_predictions == 1


def test_an_entity_observation_at_another_instant_is_a_new_label():
    existing = by_entity(("c1", 5, "Yes"))
    merged, counts = merge_labels(existing, by_entity(("c1", 5, "Yes"), ("c1", 6, "Yes")))
    assert counts["added"] == 1 and counts["duplicate"] == 1 and len(merged) == 2


def test_no_outcomes_yet_leave_every_prediction_unlabelled():
    empty = pd.DataFrame({"prediction_id": pd.Series([], dtype=str), "outcome": pd.Series([], dtype=str)})
    result = join(LOG, empty, HORIZON, "Yes")
    assert result.labelled.empty and list(result.labelled.columns) == LABELLED_COLUMNS
    assert result.unlabelled == len(LOG) and result.used == 0


def test_duplicate_prediction_ids_in_the_log_are_refused():
    with pytest.raises(ValueError, match="unique prediction_id"):
        join(pd.concat([LOG, LOG.iloc[:1]]), by_id(("p1", "Yes")), HORIZON, "Yes")


def test_with_both_classes_named_an_outcome_that_is_neither_is_incomplete_not_a_negative():
    labels = by_id(("p4", "Yes"), ("p5", "yes"), ("p1", "1"))
    named = join(LOG, labels, HORIZON, "Yes", "No")
    assert labelled_ids(named) == ["p4"] and named.unused["incomplete"] == 2
    # without the negative class named, anything but the positive one is read as a negative
    assert labelled_ids(join(LOG, labels, HORIZON, "Yes")) == ["p1", "p4", "p5"]


def test_an_entity_outcome_labels_one_prediction_per_version_and_role_so_a_flood_weighs_one_row():
    # given one customer who asked 1,000 times (production v3), and once each through the canary and the shadow
    flood = [(f"f{i}", "c9", i / 1000, "3", "production", 0.99) for i in range(1000)]
    others = [("s1", "c9", 0.5, "4", "shadow", 0.2), ("k1", "c9", 0.6, "4", "canary", 0.6)]
    predictions = log(*flood, *others, ("late", "c9", 3, "3", "production", 0.1))
    # when its outcome (observed on day 2) is joined
    result = join(predictions, by_entity(("c9", 2, "No")), HORIZON, "Yes")
    # then each version and role gets one labelled row: the latest at or before the observation
    assert labelled_ids(result) == ["f999", "k1", "s1"]
    assert result.labelled["by_entity"].all() and result.used == 1


def test_an_outcome_dated_after_it_was_received_is_not_used_and_none_labels_a_later_prediction():
    # given c1 predicted on day 0 and again just after the outcomes were received (day 2)
    predictions = log(("p1", "c1", 0, "3", "production", 0.9), ("p2", "c1", 2.001, "3", "production", 0.1))
    labels = by_entity(("c1", 10, "Yes"), ("c1", 2.002, "No"))
    labels["received_at"] = T0 + pd.Timedelta(days=2)
    # when joined: one observed on day 10 (in the future when it arrived), one 3 minutes after its arrival
    result = join(predictions, labels, HORIZON, "Yes")
    # then the future-dated one is not used and counted; the other labels only what was predicted before it came
    assert result.unused["observed_after_received"] == 1
    assert result.examples["observed_after_received"] == ("entity:c1@2026-03-11T12:00:00.000000Z",)
    assert labelled_ids(result) == ["p1"] and not result.labelled["actual"].any()
    assert sum(result.unused.values()) + result.used == len(labels)
