"""The skew check's comparison and verdict, and the feature store's lines in the policy diff (pure)."""

import math

import numpy as np
import pandas as pd
import pytest

from gates.feature_skew import compare, differ, skew_rule
from gates.policy_diff import LOOSENED, TIGHTENED, feature_changes, feature_store_changes
from pipeline.core.config import FeatureStoreParams
from pipeline.core.feature_training import recorded_features
from pipeline.stages.skew import _instant, offline_entities, offline_rows, sample_ids

from ..conftest import ROOT

VIEWS = {"customer_profile": ["gender", "SeniorCitizen"], "customer_account": ["tenure", "MonthlyCharges"]}


def frame(**changes):
    rows = {
        "customerID": ["a", "b", "c"],
        "gender": ["Male", "Female", None],
        "SeniorCitizen": [0, 1, 0],
        "tenure": [1, 20, 72],
        "MonthlyCharges": [29.85, 56.95, np.nan],
    }
    return pd.DataFrame({**rows, **changes})


@pytest.mark.parametrize(
    ("online", "offline", "different"),
    [
        (1.0, 1.0 + 1e-12, False),  # within the tolerance
        (1.0, 1.0 + 1e-6, True),
        (5000.0, 5000.0 * (1 + 1e-12), False),  # relative for large values
        (3, 3.0, False),  # an int and a float of the same value
        ("Male", "Male", False),
        ("Male", "male", True),
        (None, np.nan, False),  # missing on both sides
        (None, "Male", True),
        (pd.NA, 1, True),
        ("Yes", 1, True),  # text against a number
        (np.int64(3), 3.0, False),  # numpy scalars are the numbers they hold
        (True, True, False),
        (np.True_, True, False),
    ],
)
def test_values_differ_beyond_the_tolerance_or_as_text(online, offline, different):
    assert differ(online, offline, 1e-9)[0] is different


@pytest.mark.parametrize(
    ("online", "offline"),
    [
        ("1", 1),  # text that prints as the number
        (1, "1"),
        ("1.5", 1.5),
        ("nan", 1.0),
        (True, "True"),  # a bool against its text
        ("False", False),
        (True, 1),  # a bool against the number it equals
        (0, False),
        (np.True_, 1.0),
        (np.float64(1.0), "1.0"),
    ],
)
def test_a_type_mismatch_differs_whatever_it_prints_as(online, offline):
    # even with a tolerance that would pass any numeric gap
    assert differ(online, offline, 1e9) == (True, None)
    assert differ(offline, online, 1e9) == (True, None)


def test_a_feature_whose_type_differs_between_the_reads_is_reported():
    online = frame(SeniorCitizen=["0", "1", "0"])  # the online store serves the numbers as text
    skews = compare(online, frame(), "customerID", VIEWS, 1e-9)
    assert [(s.name, s.differing, s.compared, s.example) for s in skews] == [
        ("customer_profile.SeniorCitizen", 3, 3, ("a", "0", 0))
    ]
    assert skew_rule("churn_model", 3, skews, 1e-9).passed is False


@pytest.mark.parametrize("tolerance", [math.inf, -math.inf, math.nan, "inf", "nan", -1e-9])
def test_the_skew_tolerance_is_finite_and_not_negative(tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        FeatureStoreParams(skew={"tolerance": tolerance})


def test_a_finite_skew_tolerance_is_kept():
    assert FeatureStoreParams(skew={"tolerance": 0}).skew.tolerance == 0.0
    assert FeatureStoreParams(skew={"tolerance": 0.5}).skew.tolerance == 0.5


def test_the_same_reads_agree_and_each_differing_feature_is_named_with_counts():
    assert compare(frame(), frame(), "customerID", VIEWS, 1e-9) == []
    offline = frame(MonthlyCharges=[29.85, 66.95, np.nan], gender=["Male", "Female", "Male"])
    skews = compare(frame(), offline, "customerID", VIEWS, 1e-9)
    assert [(s.name, s.differing, s.compared) for s in skews] == [
        ("customer_profile.gender", 1, 3),
        ("customer_account.MonthlyCharges", 1, 3),
    ]
    assert skews[1].example == ("b", 56.95, 66.95) and math.isclose(skews[1].max_abs_diff, 10.0)
    rule = skew_rule("churn_model", 3, skews, 1e-9)
    assert not rule.passed and rule.value == 2
    assert "customer_account.MonthlyCharges differs for 1/3" in rule.detail and "customer_profile.gender" in rule.detail
    assert skew_rule("churn_model", 3, [], 1e-9).passed


def test_each_view_is_compared_at_its_own_instant():
    offline = pd.concat(
        [
            frame().assign(view="customer_profile"),
            frame(tenure=[2, 20, 72]).assign(view="customer_account"),
            # the profile view's rows read at the account view's instant are not compared
        ]
    )
    skews = compare(frame(), offline, "customerID", VIEWS, 1e-9)
    assert [(s.name, s.differing) for s in skews] == [("customer_account.tenure", 1)]


def test_offline_instants_come_from_the_online_timestamps():
    now = pd.Timestamp("2026-12-06T12:00:00Z")
    online = frame(**{"gender__ts": [1_700_000_000, 0, 1_700_000_000], "tenure__ts": [1_700_000_100] * 3})
    entities = offline_entities(online, "customerID", VIEWS, now)
    assert len(entities) == 6 and set(entities["view"]) == set(VIEWS)
    profile = entities[entities["view"] == "customer_profile"]["event_timestamp"].tolist()
    # whole seconds: the offline row may be up to a second later than the online stamp says
    assert profile[0] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC") + pd.Timedelta("999999us")
    assert profile[1] == now  # never materialized: read as of now
    assert _instant(pd.Timestamp("2026-01-01T00:00:00.5Z"), now) == pd.Timestamp("2026-01-01T00:00:00.5Z")


def test_the_sample_is_seeded_distinct_and_bounded():
    entities = pd.DataFrame({"customerID": [f"c{i}" for i in range(500)] * 2})
    first = sample_ids(entities, "customerID", 50, 42)
    assert first == sample_ids(entities, "customerID", 50, 42) and len(set(first)) == 50
    assert first != sample_ids(entities, "customerID", 50, 7)
    assert len(sample_ids(entities, "customerID", 5000, 42)) == 500


def record(views, digest="a" * 64, service="churn_model"):
    tags = {
        "feature_store.service": service,
        "feature_store.views": ",".join(views),
        "feature_store.definitions_hash": digest,
    }
    params = {f"feature_store.view.{v}": ",".join(f"{n}:{t}" for n, t in fs) for v, fs in views.items()}
    return recorded_features(tags, params)


def test_a_changed_feature_definition_shows_in_the_policy_diff():
    base = record({"customer_account": [("tenure", "Int64"), ("MonthlyCharges", "Float64")]})
    assert feature_changes(base, base, "production v3") == []
    assert recorded_features({}, {}) is None
    changed = record(
        {"customer_account": [("tenure", "Float64"), ("Contract", "String")], "customer_usage": [("calls", "Int64")]},
        digest="b" * 64,
    )
    messages = [c.message for c in feature_changes(base, changed, "production v3")]
    assert messages[0] == f"changes the feature definitions from {'a' * 12} (production v3) to {'b' * 12}"
    assert (
        "feature view 'customer_account' adds Contract; removes MonthlyCharges; retypes tenure Int64 -> Float64"
        in (messages[1])
    )
    assert messages[2].startswith("feature view 'customer_usage' is new")
    only_hash = feature_changes(base, {**base, "definitions_hash": "c" * 64}, "production v3")
    assert [c.key for c in only_hash] == ["feature_store.definitions_hash"]  # a transformation, a TTL, a source
    assert "trains from feature service 'churn_model'" in feature_changes(None, base, "production v3")[0].message
    assert feature_changes(None, None, "production v3") == []


def test_feature_store_params_loosen_and_tighten_like_thresholds():
    base = FeatureStoreParams(service="churn_model").model_dump()
    current = FeatureStoreParams(
        service="churn_model",
        stale="warn",
        max_age_s={"customer_profile": 7_776_000, "customer_account": 60},
        skew={"sample": 500, "tolerance": 0.01},
    ).model_dump()
    changes = {c.key: c for c in feature_store_changes(base, current)}
    assert changes["feature_store.stale"].direction == LOOSENED
    assert changes["feature_store.skew.tolerance"].direction == LOOSENED
    assert changes["feature_store.max_age_s.customer_account"].direction == TIGHTENED
    assert changes["feature_store.skew.sample"].direction == TIGHTENED
    assert "feature_store.max_age_s.customer_profile" not in changes
    assert feature_store_changes(base, base) == []


def test_views_read_at_the_same_instant_share_one_offline_read():
    now = pd.Timestamp("2026-12-06T12:00:00Z")
    online = frame(**{"gender__ts": [1_700_000_000] * 3, "tenure__ts": [1_700_000_000, 1_700_000_000, 1_700_000_500]})
    requests = offline_entities(online, "customerID", VIEWS, now)
    asked = []

    def read(rows):
        asked.append(rows.copy())
        return frame().set_index("customerID").loc[rows["customerID"]].reset_index().assign(**{"event_timestamp": 0})

    offline = offline_rows(requests, "customerID", read)
    assert len(asked[0]) == 4  # a, b and c at one instant; c's account view at another
    assert len(offline) == 6 and offline["gender"].tolist()[:2] == ["Male", "Female"]
    assert compare(frame(), offline, "customerID", VIEWS, 1e-9) == []


def test_an_unusable_feature_store_url_is_a_config_error_that_hides_its_text():
    from pipeline.core.errors import ConfigError
    from pipeline.stages.skew import _serving_check
    from pipeline.store.feature_store import ServiceDescription

    description = ServiceDescription("churn_model", "customerID", (), "")
    with pytest.raises(ConfigError, match="FEATURE_STORE_URL") as caught:
        repo, url = ROOT / "featurestore" / "repo", "redis://:se/cret@host:port"
        _serving_check(repo, url, description, ["c1"], pd.DataFrame())
    assert "se/cret" not in str(caught.value)
