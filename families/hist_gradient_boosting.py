"""scikit-learn's histogram gradient boosting behind one-hot preprocessing."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from families._seam import Family, FamilyParams, StructureError, one_hot_preprocessing
from families._trees import check_walk


class HistGradientBoostingParams(FamilyParams):
    """`model.hist_gradient_boosting`: its hyperparameters."""

    learning_rate: Annotated[float, Field(gt=0)] = 0.05
    max_iter: Annotated[int, Field(gt=0)] = 200
    max_depth: Annotated[int, Field(gt=0)] | None = None
    class_weight: Literal["balanced"] | None = "balanced"


def build(numeric: list[str], categorical: list[str], params: HistGradientBoostingParams, seed: int) -> tuple[Any, Any]:
    """One-hot preprocessing and an unfitted HistGradientBoostingClassifier."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    classifier = HistGradientBoostingClassifier(random_state=seed, **params.model_dump())
    return one_hot_preprocessing(numeric, categorical), classifier


def check(where: str, classifier: Any, width: int) -> None:
    """Every predictor's nodes walk safely; no categorical split (this family never builds one)."""
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    mapper = getattr(classifier, "_bin_mapper", None)
    categorical = getattr(mapper, "is_categorical_", None)
    if categorical is not None and np.asarray(categorical).any():
        raise StructureError(f"{where}: categorical splits are not built by this project")
    for i, iteration in enumerate(getattr(classifier, "_predictors", None) or []):
        for k, predictor in enumerate(iteration):
            label = f"{where}._predictors[{i}][{k}]"
            nodes = np.asarray(predictor.nodes)
            if nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 or len(nodes) < 1:
                raise StructureError(f"{label}: node array of an unexpected shape or type")
            leaf = nodes["is_leaf"] != 0
            if nodes["is_categorical"][~leaf].any():
                raise StructureError(f"{label}: categorical splits are not built by this project")
            left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
            check_walk(label, left, right, nodes["feature_idx"], leaf=leaf, width=width)


FAMILY = Family(
    name="hist_gradient_boosting",
    params=HistGradientBoostingParams,
    build=build,
    classifier_types=frozenset(
        {"sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier"}
    ),
    allowed_types=frozenset(
        {
            "sklearn._loss._loss.CyHalfBinomialLoss",
            "sklearn._loss.link.Interval",
            "sklearn._loss.link.LogitLink",
            "sklearn._loss.loss.HalfBinomialLoss",
            "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
            "sklearn.preprocessing._label.LabelEncoder",
        }
    ),
    check=check,
)
