"""The compiled path's request-time shortcuts give the same numbers as the sklearn steps they stand for.

Text columns become the join of precomputed slices, one record of a linear model
is answered in scalars, and /predict's decoder takes known categories as Literals
first: each must give exactly what the slower way gives, including for missing
values, NaN and categories never seen in training.
"""

import json

import numpy as np
import pandas as pd
import pytest

from api.model.compiled import CompiledPipeline
from api.model.fast_decoders import RecordDecoder
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.core.train import train

from ..api.conftest import make_model
from ..families import FAMILY_NAMES, quick_params


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def trained(request):
    data = prepare(generate_churn(800, 5).astype(str), DataParams())
    return train(data, quick_params(request.param), 0.25, 5)


def awkward(X: pd.DataFrame) -> pd.DataFrame:
    """The test set's first rows with a missing number, missing and NaN text, and an unseen category."""
    X = X.head(12).copy().astype({"Contract": object, "PaymentMethod": object})
    X.loc[X.index[0], "TotalCharges"] = np.nan
    X.loc[X.index[1], "Contract"] = None
    X.loc[X.index[2], "Contract"] = np.nan
    X.loc[X.index[3], "PaymentMethod"] = "Barter"
    return X


def columns(frame: pd.DataFrame) -> dict:
    return {name: frame[name].tolist() for name in frame.columns}


def test_the_matrix_is_the_column_transformers_for_a_batch_and_for_each_record_alone(trained):
    # Given a fitted pipeline and records with missing values and an unseen category
    compiled = CompiledPipeline(trained.model)
    preprocess = trained.model.steps[-2][1]
    X = awkward(trained.split.X_test)
    # When the compiled path builds the matrix for the batch, and for each record alone
    # Then it is the ColumnTransformer's, number for number
    assert np.array_equal(compiled.transform(columns(X)), preprocess.transform(X), equal_nan=True)
    for i in range(len(X)):
        row = X.iloc[[i]]
        assert np.array_equal(compiled.transform(columns(row)), preprocess.transform(row), equal_nan=True)


def test_one_record_is_answered_as_the_matrix_path_answers_it(trained):
    # Given a compiled pipeline and records predicted one at a time
    compiled = CompiledPipeline(trained.model)
    X = awkward(trained.split.X_test)
    for i in range(len(X)):
        one = columns(X.iloc[[i]])
        # When the record is answered (a linear model: in scalars)
        labels, positive = compiled.answer(one, 1)
        # Then the labels and probabilities are predict's, bit for bit, and sklearn's
        expected_labels, proba = compiled.predict(one)
        assert labels == expected_labels.tolist() and positive == proba[:, 1].tolist()
        assert labels == trained.model.predict(X.iloc[[i]]).tolist()
        assert np.allclose(positive, trained.model.predict_proba(X.iloc[[i]])[:, 1], rtol=0, atol=1e-12)


def test_known_categories_decode_first_and_any_other_string_still_decodes(trained):
    # Given the loaded model's decoder, which takes the model's categories as Literals first
    model = make_model(trained)
    plain = RecordDecoder(model.features, model.entity_field)
    assert model.categories()["Contract"], "a compiled model's categories reach its decoder"
    records = json.loads(trained.split.X_test.head(5).to_json(orient="records"))
    unseen = [*records, {**records[0], "Contract": "Decade-long"}]
    for body in (records, unseen):
        raw = json.dumps({"records": body}).encode()
        # When the body is decoded with and without the categories
        fast, slow = model.request_columns(raw), plain.columns(raw, 100)
        # Then the columns are the same (an unseen category is decoded by the plain decoder)
        assert slow is not None and list(fast) == list(slow)
        for name, values in slow.items():
            assert np.asarray(fast[name], dtype=object).tolist() == np.asarray(values, dtype=object).tolist(), name
    # And a request with an unseen category is answered, its category encoded as none seen
    assert len(model.predict_columns(model.request_columns(json.dumps({"records": unseen}).encode())).labels) == 6
