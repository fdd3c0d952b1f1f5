"""Hostile input never gets a 5xx, on every model type; answers never echo a payload back."""

import json

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.settings import Settings
from pipeline.churn_data import generate_churn
from pipeline.config import DataParams, ModelParams
from pipeline.data import prepare
from pipeline.train import train

from .conftest import make_model

MODEL_TYPES = ["logistic_regression", "random_forest", "hist_gradient_boosting"]


@pytest.fixture(scope="module", params=MODEL_TYPES)
def served(request):
    data = prepare(generate_churn(600, 5).astype(str), DataParams())
    result = train(data, ModelParams(type=request.param), test_size=0.25, seed=5)
    record = json.loads(result.split.X_test.head(1).to_json(orient="records"))[0]
    app = create_app(ModelHolder(model=make_model(result)), Settings(max_body_bytes=1_000_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, record


HUGE = [1e308, -1e308, 1.7976931348623157e308, 3.5e38, -3.5e38, 5e-324]


@pytest.mark.parametrize("value", HUGE)
def test_huge_finite_numbers_are_answered_or_refused_by_name_never_a_5xx(served, value):
    client, record = served
    answer = client.post("/predict", json={"records": [{**record, "tenure": value}]})
    assert answer.status_code in (200, 422), answer.text
    if answer.status_code == 422:
        assert "'tenure'" in answer.json()["message"] and "too large for this model" in answer.json()["message"]
    invocations = client.post("/invocations", json={"dataframe_records": [{**record, "tenure": value}]})
    assert invocations.status_code in (200, 400), invocations.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"records": [{"tenure": NaN}]}',
        b'{"records": [{"tenure": Infinity}]}',
        b'{"records": [{"tenure": -Infinity}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"records": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        '{"records": [{"gender": "\xe9"}]}'.encode("latin-1"),  # not UTF-8
        '{"records": []}'.encode("utf-16"),
        b"\xff\xfe\x00",
        b"",
        b'{"records": [{"tenure": 1e999}]}',
    ],
)
def test_non_finite_deeply_nested_and_wrongly_encoded_bodies_are_4xx(served, body):
    client, _ = served
    for path in ("/predict", "/invocations"):
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:300])


def test_error_answers_quote_only_a_short_prefix_of_a_bad_value(served):
    client, record = served
    answer = client.post("/predict", json={"records": [{**record, "tenure": "9" * 500_000}]})
    assert answer.status_code == 422 and len(answer.content) < 1000
    assert "(500002 characters)" in answer.json()["message"]
    many_keys = {f"k{i}": i for i in range(50_000)}
    assert len(client.post("/predict", json=many_keys).content) < 1000


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_parsed(served):
    client, record = served
    big = json.dumps({"records": [record] * 5000}).encode()  # about 2.5 MB, limit 1 MB
    for path in ("/predict", "/invocations"):
        answer = client.post(path, content=big, headers={"content-type": "application/json"})
        assert answer.status_code == 413 and "exceeds the limit of 1000000 bytes" in answer.text

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(30):
            yield b" " * 50_000

    assert client.post("/predict", content=chunks()).status_code == 413
    assert client.post("/predict", json={"records": [record]}).status_code == 200


def test_invocations_honours_the_batch_limit(served):
    client, record = served
    answer = client.post("/invocations", json={"dataframe_records": [record] * 101})  # limit 100
    assert answer.status_code == 400 and "exceed the batch limit of 100" in answer.text
    assert client.post("/invocations", json={"dataframe_records": [record] * 100}).status_code == 200
