import numpy as np
import pandas as pd
import pytest

from gates.profile import compare_profiles, profile
from gates.profile import percentile_psi as psi


def frame(seed: int, shift: float = 0.0, plans=("basic", "premium")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 4000
    charges = rng.normal(60 + shift, 15, n)
    charges[:40] = np.nan
    return pd.DataFrame({"charges": charges, "plan": rng.choice(plans, n)})


KINDS = {"charges": "numeric", "plan": "categorical"}


def test_a_profile_holds_types_missing_shares_categories_and_percentiles():
    p = profile(frame(0), KINDS)
    charges, plan = p["columns"]["charges"], p["columns"]["plan"]
    assert p["rows"] == 4000 and charges["kind"] == "numeric" and charges["missing_share"] == 0.01
    assert len(charges["percentiles"]) == 101 and charges["percentiles"] == sorted(charges["percentiles"])
    assert set(plan["categories"]) == {"basic", "premium"} and sum(plan["categories"].values()) == pytest.approx(1)


def test_psi_is_zero_for_the_same_distribution_small_for_a_resample_and_large_for_a_shift():
    same = profile(frame(0), KINDS)["columns"]["charges"]["percentiles"]
    resampled = profile(frame(1), KINDS)["columns"]["charges"]["percentiles"]
    shifted = profile(frame(1, shift=10), KINDS)["columns"]["charges"]["percentiles"]
    assert psi(same, same) == 0
    assert psi(same, resampled) < 0.02
    assert psi(same, shifted) > 0.2  # the usual "significant shift" threshold


def test_psi_of_a_binary_column_follows_its_share():
    def percentiles(share: float) -> list[float]:
        return list(np.percentile((np.arange(1000) < share * 1000).astype(float), np.arange(101)))

    exact = (0.5 - 0.16) * np.log(0.5 / 0.16) + (0.5 - 0.84) * np.log(0.5 / 0.84)
    assert psi(percentiles(0.16), percentiles(0.5)) == pytest.approx(exact, abs=0.06)  # 1 % resolution


def test_the_comparison_names_new_missing_and_retyped_columns_unseen_categories_and_shifts():
    production = profile(frame(0), KINDS)
    changed = frame(1, shift=10, plans=("basic", "premium", "family")).assign(region="north")
    changed = changed.drop(columns=["charges"]).assign(charges=changed["charges"].astype(str))
    drift = compare_profiles(production, profile(changed, {**KINDS, "charges": "categorical", "region": "categorical"}))
    assert drift.new_columns == ["region"] and drift.missing_columns == []
    assert drift.kind_changes == [{"column": "charges", "from": "numeric", "to": "categorical"}]
    assert list(drift.unseen_categories["plan"]) == ["family"]
    shifted = compare_profiles(production, profile(frame(1, shift=10), KINDS))
    assert shifted.psi["charges"] > 0.2
    assert any("'charges' shifted: PSI" in w for w in shifted.warnings())
