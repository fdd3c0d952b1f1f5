"""Property-based: generated records and bodies never get a 5xx from /predict or /invocations."""

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.holder import ModelHolder
from pipeline.churn_data import generate_churn
from pipeline.config import DataParams, ModelParams
from pipeline.data import prepare
from pipeline.train import train

from .conftest import make_model

EXAMPLES = 300  # per endpoint and model type: 1,200 generated requests in all

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 3.5e38]),
)
anything = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module", params=["logistic_regression", "random_forest"])
def served(request):
    data = prepare(generate_churn(400, 9).astype(str), DataParams())
    result = train(data, ModelParams(type=request.param), test_size=0.25, seed=9)
    model = make_model(result)
    record = json.loads(result.split.X_test.head(1).to_json(orient="records"))[0]
    with TestClient(create_app(ModelHolder(model=model)), raise_server_exceptions=False) as client:
        yield client, model, record


def records(model, record):
    """Records near the schema: each field valid, retyped, null, huge, odd text or missing; sometimes an extra key."""
    fields = {}
    for spec in model.features:
        valid = st.just(record[spec.name])
        fields[spec.name] = st.one_of(valid, valid, numbers, st.text(max_size=30), st.none(), st.booleans(), anything)
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda r: st.one_of(
            st.just(r), st.dictionaries(st.text(max_size=8), anything, max_size=2).map(lambda x: {**r, **x})
        )
    )


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_predict_never_answers_5xx(served, data):
    client, model, record = served
    body = data.draw(st.one_of(st.lists(records(model, record), max_size=4).map(lambda r: {"records": r}), anything))
    answer = client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    assert answer.status_code < 500, (body, answer.text[:300])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_invocations_never_answers_5xx(served, data):
    client, model, record = served
    rows = st.lists(records(model, record), min_size=1, max_size=4)
    body = data.draw(
        st.one_of(
            rows.map(lambda r: {"dataframe_records": r}),
            rows.map(lambda r: {"inputs": r}),
            rows.map(lambda r: {"instances": r}),
            anything.map(lambda a: {"dataframe_split": a}),
            anything,
        )
    )
    answer = client.post("/invocations", content=json.dumps(body), headers={"content-type": "application/json"})
    assert answer.status_code < 500, (body, answer.text[:300])
