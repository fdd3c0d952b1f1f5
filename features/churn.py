"""Worked example of team feature code on the churn data: charges per month of tenure, and a tenure bucket."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class ChargesPerTenureMonth(TransformerMixin, BaseEstimator):
    """Adds `charges_per_tenure_month`: TotalCharges / tenure (a month's bill for a new customer, tenure 0).

    It tells apart a customer whose total charges are high because they stayed long from one who pays a
    lot per month; missing charges stay missing for the model's own imputation.
    """

    def __init__(self, total: str = "TotalCharges", tenure: str = "tenure", monthly: str = "MonthlyCharges") -> None:
        self.total = total
        self.tenure = tenure
        self.monthly = monthly

    def fit(self, X: pd.DataFrame, y: Any = None) -> ChargesPerTenureMonth:
        """Nothing to learn."""
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """X with the ratio added."""
        total = pd.to_numeric(X[self.total], errors="coerce").to_numpy(dtype=np.float64)
        tenure = pd.to_numeric(X[self.tenure], errors="coerce").to_numpy(dtype=np.float64)
        monthly = pd.to_numeric(X[self.monthly], errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(tenure > 0, total / tenure, monthly)
        return X.assign(charges_per_tenure_month=ratio)


class TenureBucket(TransformerMixin, BaseEstimator):
    """Adds `tenure_bucket`, a category: the tenure's band by `edges` in months ("0-12", "12-24", ..., "72+")."""

    def __init__(self, column: str = "tenure", edges: tuple[int, ...] = (12, 24, 48, 72)) -> None:
        self.column = column
        self.edges = edges

    def fit(self, X: pd.DataFrame, y: Any = None) -> TenureBucket:
        """Fix the band names from the edges."""
        bounds = [0, *self.edges]
        self.labels_ = [f"{lo}-{hi}" for lo, hi in itertools.pairwise(bounds)] + [f"{bounds[-1]}+"]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """X with the band added; a missing tenure gets a missing band."""
        tenure = pd.to_numeric(X[self.column], errors="coerce").to_numpy(dtype=np.float64)
        band = np.searchsorted(np.asarray(self.edges, dtype=np.float64), tenure, side="right")
        labels = np.asarray(self.labels_, dtype=object)[np.minimum(band, len(self.labels_) - 1)]
        return X.assign(tenure_bucket=np.where(np.isnan(tenure), None, labels))
