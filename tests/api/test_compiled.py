"""The compiled numpy path gives exactly the sklearn pipeline's answers."""

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures

from api.model.compiled import CompiledPipeline, NotCompilable
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.train import train


@pytest.fixture(scope="module")
def churn():
    return prepare(generate_churn(3000, 11).astype(str), DataParams())


def columns(frame: pd.DataFrame) -> dict:
    return {name: frame[name].tolist() for name in frame.columns}


@pytest.mark.parametrize("kind", ["logistic_regression", "random_forest", "hist_gradient_boosting"])
def test_identical_to_sklearn_on_the_whole_test_set(churn, kind):
    params = ModelParams(type=kind, random_forest={"n_estimators": 20})
    result = train(churn, params, 0.2, 11)
    X = result.split.X_test
    labels, proba = CompiledPipeline(result.model).predict(columns(X))
    assert np.array_equal(labels, result.model.predict(X))
    assert np.array_equal(proba, result.model.predict_proba(X))


def test_missing_values_and_unknown_categories_match_sklearn(churn):
    result = train(churn, ModelParams(), 0.2, 11)
    X = result.split.X_test.head(6).copy()
    X.loc[X.index[0], "TotalCharges"] = np.nan
    X.loc[X.index[1], "Contract"] = np.nan
    X.loc[X.index[2], "PaymentMethod"] = "Barter"
    X.loc[X.index[3], "tenure"] = np.nan
    labels, proba = CompiledPipeline(result.model).predict(columns(X))
    assert np.array_equal(labels, result.model.predict(X))
    assert np.array_equal(proba, result.model.predict_proba(X))


def test_unknown_pipeline_shapes_are_refused(churn):
    result = train(churn, ModelParams(), 0.2, 11)
    with pytest.raises(NotCompilable):
        CompiledPipeline(Pipeline([("poly", PolynomialFeatures()), ("model", result.model.steps[1][1])]))
    with pytest.raises(NotCompilable):
        CompiledPipeline(result.model.steps[1][1])
