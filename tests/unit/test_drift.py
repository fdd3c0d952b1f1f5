"""Live drift bins: read off a training profile, every served value lands in exactly one bin."""

import numpy as np
import pandas as pd
import pytest

from api.model.drift import MISSING, UNSEEN, drift_bins
from gates.profile import profile

TRAINING = pd.DataFrame(
    {
        "tenure": np.arange(1, 101, dtype=float),  # 1..100: deciles 10.9, 20.8, ... split it in ten
        "senior": [0.0] * 80 + [1.0] * 20,  # two values only: fewer bins than deciles
        "contract": ["Month"] * 60 + ["Year"] * 30 + [None] * 10,
    }
)
KINDS = {"tenure": "numeric", "senior": "numeric", "contract": "categorical"}


@pytest.fixture
def bins():
    return {b.name: b for b in drift_bins(profile(TRAINING, KINDS), list(KINDS))}


def test_the_training_data_fills_each_bin_as_its_training_share_says(bins):
    for name, column in TRAINING.items():
        bins[name].observe(column.tolist())
        counts = np.asarray(bins[name].take(), dtype=float)
        assert np.allclose(counts / counts.sum(), bins[name].expected, atol=0.02), name
        assert sum(bins[name].expected) == pytest.approx(1.0, abs=0.011)


def test_numeric_bins_are_the_deciles_and_collapse_where_values_repeat(bins):
    assert bins["tenure"].labels == [*(f"q{i}" for i in range(10)), MISSING]
    senior = bins["senior"]
    assert len(senior.labels) < len(bins["tenure"].labels) and senior.labels[-1] == MISSING
    assert senior.expected[0] == pytest.approx(0.8, abs=0.02)  # every 0 sits in the first bin


def test_unseen_categories_and_missing_values_have_bins_of_their_own(bins):
    contract = bins["contract"]
    assert contract.labels == ["Month", "Year", UNSEEN, MISSING]
    assert contract.expected == pytest.approx([0.6, 0.3, 0.0, 0.1])
    contract.observe(["Month", "Two year", None, float("nan"), "Year"])
    assert contract.take() == [1, 1, 1, 2]
    assert contract.take() == [0, 0, 0, 0]  # taken: counting starts again


def test_one_value_at_a_time_and_whole_columns_bin_alike(bins):
    values = [0.5, 10.9, 11.0, 55.5, 1e9, -3.0, None, float("nan"), *np.linspace(0, 120, 200).tolist()]
    for value in values:
        bins["tenure"].observe([value])
    one_by_one = bins["tenure"].take()
    bins["tenure"].observe(np.asarray([np.nan if v is None else v for v in values]))
    assert bins["tenure"].take() == one_by_one
    categories = ["Month", "Year", "Decade", None] * 40
    for value in categories:
        bins["contract"].observe([value])
    single = bins["contract"].take()
    bins["contract"].observe(categories)
    assert bins["contract"].take() == single


def test_no_profile_means_no_bins():
    assert drift_bins(None, ["tenure"]) == [] and drift_bins({"columns": {}}, ["tenure"]) == []
