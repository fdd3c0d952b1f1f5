"""Every declared model family, with few trees: tests judge behaviour, not quality.

Tests iterate over FAMILY_NAMES (derived from families/, never listed by hand). A
family not named in QUICK trains with its params.yaml defaults.
"""

from families import FAMILIES
from pipeline.core.config import ModelParams

FAMILY_NAMES = sorted(FAMILIES)
QUICK = {
    "random_forest": {"n_estimators": 8, "max_depth": 6},
    "hist_gradient_boosting": {"max_iter": 5},
    "xgboost": {"n_estimators": 10},
    "lightgbm": {"n_estimators": 10},
}
TEAM_FEATURES = ["churn.ChargesPerTenureMonth", "churn.TenureBucket"]


def quick_params(family: str, **fields) -> ModelParams:
    """ModelParams of `family` with few trees (more `fields`, such as features, as given)."""
    section = {family: QUICK[family]} if family in QUICK else {}
    return ModelParams(type=family, **section, **fields)
