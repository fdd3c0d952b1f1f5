"""XGBoost's scikit-learn classifier, taught the labels scikit-learn classifiers take.

XGBoost wants class labels 0..n-1; the data's labels are text ("Yes"/"No").
This subclass numbers them in sorted order when it fits and answers them
again when it predicts, as every scikit-learn classifier does. It lives in its
own module so that only a version of this family imports xgboost.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from xgboost import XGBClassifier


class LabelledXGBClassifier(XGBClassifier):
    """XGBClassifier whose `classes_` are the labels it was fitted on, whatever their type."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> LabelledXGBClassifier:
        """Fit on the labels' codes (sorted order), then remember the labels."""
        labels, codes = np.unique(np.asarray(y), return_inverse=True)
        self.labels_ = None
        super().fit(X, codes, **kwargs)
        self.labels_ = labels
        return self

    @property
    def classes_(self) -> np.ndarray:
        """The fitted labels (XGBoost's own 0..n-1 while it fits)."""
        labels = getattr(self, "labels_", None)
        return np.arange(self.n_classes_) if labels is None else labels

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        """The label of the likelier class, as the probabilities give it."""
        return self.classes_[np.asarray(super().predict(X, **kwargs), dtype=np.intp)]
