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

from ..families import FAMILY_NAMES, TEAM_FEATURES, quick_params
from .conftest import make_model


@pytest.fixture(scope="module")
def churn():
    return prepare(generate_churn(3000, 11).astype(str), DataParams())


def columns(frame: pd.DataFrame) -> dict:
    return {name: frame[name].tolist() for name in frame.columns}


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_identical_to_sklearn_on_the_whole_test_set(churn, kind):
    result = train(churn, quick_params(kind), 0.2, 11)
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


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_behind_the_team_feature_steps_the_loaded_model_is_compiled_and_answers_as_sklearn(churn, kind):
    result = train(churn, quick_params(kind, features=TEAM_FEATURES), 0.2, 11)
    model = make_model(result)
    assert model.compiled is not None and model.compiled.features, model.compile_note
    X = result.split.X_test.head(300)
    prediction = model.predict_columns(columns(X))
    assert prediction.labels == result.model.predict(X).tolist()
    expected = result.model.predict_proba(X)[:, model.positive_index]
    assert np.allclose(prediction.probabilities, expected, rtol=0, atol=1e-12)
