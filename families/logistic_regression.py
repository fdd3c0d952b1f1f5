"""Logistic regression behind one-hot preprocessing: the default, and the one the compiled path computes whole."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from families._seam import Family, FamilyParams, StructureError, one_hot_preprocessing


class LogisticRegressionParams(FamilyParams):
    """`model.logistic_regression`: its hyperparameters."""

    C: Annotated[float, Field(gt=0)] = 1.0
    max_iter: Annotated[int, Field(gt=0)] = 1000
    class_weight: Literal["balanced"] | None = "balanced"


def build(numeric: list[str], categorical: list[str], params: LogisticRegressionParams, seed: int) -> tuple[Any, Any]:
    """One-hot preprocessing and an unfitted LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    return one_hot_preprocessing(numeric, categorical), LogisticRegression(random_state=seed, **params.model_dump())


def check(where: str, classifier: Any, width: int) -> None:
    """Coefficients for exactly the inputs it is given (a matrix product reads nothing else)."""
    import numpy as np

    coef = np.asarray(classifier.coef_)
    if coef.ndim != 2 or coef.shape[1] != width:
        raise StructureError(f"{where}: coefficients of shape {coef.shape} for {width} inputs")


FAMILY = Family(
    name="logistic_regression",
    params=LogisticRegressionParams,
    build=build,
    classifier_types=frozenset({"sklearn.linear_model._logistic.LogisticRegression"}),
    allowed_types=frozenset({"sklearn.linear_model._logistic.LogisticRegression"}),
    check=check,
    fast_path="compiled numpy: preprocessing and the linear score, no sklearn per request",
)
