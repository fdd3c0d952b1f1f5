"""The service in-process: behaviour and every error path."""

import asyncio
import json
import re
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder

from .conftest import make_model


@pytest.fixture
def client(trained):
    with TestClient(create_app(ModelHolder(model=make_model(trained)))) as c:
        yield c


def test_health_ready_and_model(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "version": "7"}
    info = client.get("/model").json()
    assert info["version"] == "7" and info["run_id"] == "run-7" and info["git_sha"] == "abc"
    assert info["metrics"] == {"f1": 0.6} and info["loaded_at"] and info["fast_path"] is True


def test_the_openapi_document_shows_the_serving_versions_record_schema(client, trained):
    doc = client.get("/openapi.json").json()
    record = doc["components"]["schemas"]["Record"]
    assert set(record["properties"]) == set(trained.split.X_train.columns)
    assert record["properties"]["tenure"] == {"type": "number"} and record["properties"]["gender"] == {"type": "string"}
    complete = {c for c in trained.split.X_train.columns if trained.split.X_train[c].notna().all()}
    assert set(record["required"]) == complete and record["additionalProperties"] is False
    assert record["properties"]["TotalCharges"] == {"anyOf": [{"type": "number"}, {"type": "null"}]}  # has blanks
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["records"]["items"] == {"$ref": "#/components/schemas/Record"}
    assert body["properties"]["records"]["maxItems"] == 100 and doc["info"]["version"] == "7"


def test_predict_matches_the_sklearn_pipeline(client, trained, records):
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "7"
    body = response.json()
    X = trained.split.X_test.head(20)
    assert body["model_version"] == "7"
    assert body["predictions"] == trained.model.predict(X).tolist()
    positive = list(trained.model.classes_).index("Yes")
    assert body["probabilities"] == trained.model.predict_proba(X)[:, positive].tolist()


def test_unknown_categories_and_missing_optional_values_are_answered(client, records):
    record = {**records[0], "Contract": "Ten year"}
    assert client.post("/predict", json={"records": [record]}).status_code == 200


def problems(response) -> list[dict]:
    assert response.status_code == 422, response.text
    return response.json()["detail"]


def test_missing_field_names_field_and_record(client, records):
    broken = [records[0], {k: v for k, v in records[1].items() if k != "tenure"}]
    [problem] = problems(client.post("/predict", json={"records": broken}))
    assert problem["record"] == 1 and problem["field"] == "tenure"
    assert "record 1: field 'tenure'" in problem["message"]


def test_unknown_field_is_refused(client, records):
    [problem] = problems(client.post("/predict", json={"records": [{**records[0], "shoe_size": 44}]}))
    assert problem["field"] == "shoe_size" and "not a feature" in problem["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("tenure", "twelve"), ("tenure", True), ("gender", 1), ("MonthlyCharges", None), ("Contract", ["x"])],
)
def test_wrong_type_is_refused(client, records, field, value):
    [problem] = problems(client.post("/predict", json={"records": [{**records[0], field: value}]}))
    assert problem["field"] == field and problem["record"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"records": []}, "records is empty"),
        ({"rows": []}, 'body must be {"records": [...]}'),
        ([1, 2], 'body must be {"records": [...]}'),
        ({"records": {"a": 1}}, "records must be a list"),
        ({"records": ["not a record"]}, "record 0"),
    ],
)
def test_malformed_bodies_are_422(client, body, message):
    assert message in problems(client.post("/predict", json=body))[0]["message"]


def test_batch_over_the_limit_is_refused(client, records):
    [problem] = problems(client.post("/predict", json={"records": records * 6}))
    assert "120 records exceed the batch limit of 100" in problem["message"]


def test_malformed_json_is_400(client):
    response = client.post("/predict", content=b'{"records": [', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "malformed JSON" in response.json()["message"]


def test_no_model_means_503_with_the_reason_and_health_still_200():
    with TestClient(create_app(ModelHolder())) as c:
        assert c.get("/health").status_code == 200
        for response in (c.get("/ready"), c.get("/model"), c.post("/predict", json={"records": [{}]})):
            assert response.status_code == 503 and "no model" in response.json()["detail"]


def test_predict_takes_only_post_and_sends_its_length(client, records):
    for response in (client.get("/predict"), client.put("/predict", json={"records": records[:1]})):
        assert response.status_code == 405 and response.headers["allow"] == "POST"
    answer = client.post("/predict", json={"records": records[:2]})
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert answer.headers["content-type"] == "application/json"


def test_a_batch_too_big_for_the_event_loop_is_predicted_in_a_thread_with_the_same_answer(trained):
    X = trained.split.X_test
    rows = X.sample(3000, replace=True, random_state=1)  # over INLINE_RECORDS
    batch = json.loads(rows.to_json(orient="records"))
    with TestClient(create_app(ModelHolder(model=make_model(trained, max_batch_size=5000)))) as c:
        answer = c.post("/predict", json={"records": batch})
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["predictions"] == trained.model.predict(rows).tolist()


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "inputs", "instances"])
def test_invocations_accepts_every_mlflow_format(client, trained, fmt):
    X = trained.split.X_test.head(15)
    if fmt == "dataframe_split":
        payload = {fmt: json.loads(X.to_json(orient="split", index=False))}
    else:
        payload = {fmt: json.loads(X.to_json(orient="records"))}
    response = client.post("/invocations", json=payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": trained.model.predict(X).tolist()}


@pytest.mark.parametrize(
    ("payload", "status"),
    [({"dataframe_records": [{"gender": "Male"}]}, 400), ({"nonsense": []}, 400), (b"{", 400)],
)
def test_invocations_bad_input_is_4xx(client, payload, status):
    if isinstance(payload, bytes):
        response = client.post("/invocations", content=payload, headers={"content-type": "application/json"})
    else:
        response = client.post("/invocations", json=payload)
    assert response.status_code == status, response.text
    assert "message" in response.json()


def test_invocations_unsupported_content_type_is_415(client):
    response = client.post("/invocations", content=b"a,b", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_metrics_count_requests_predictions_and_version(client, records):
    client.post("/predict", json={"records": records[:3]})
    client.post("/predict", json={"records": []})
    text = client.get("/metrics").text
    # every metric that concerns a model says which version: the one that answered, or refused
    assert 'api_requests_total{endpoint="/predict",status="200",version="7"} 1.0' in text
    assert 'api_requests_total{endpoint="/predict",status="422",version="7"} 1.0' in text
    assert 'api_predictions_total{version="7"} 3.0' in text
    assert "api_serving_model_version 7.0" in text
    assert 'api_request_latency_seconds_count{endpoint="/predict",version="7"} 2.0' in text
    assert 'api_model_loaded{role="production",version="7"} 1.0' in text and "api_ready 1.0" in text


class SwitchingSource:
    """Stands in for the registry: which version to serve, and how to load it."""

    def __init__(self, models: dict, target: str):
        self.models, self.target = models, target
        self.loads: list[str] = []

    def target_version(self) -> str:
        return self.target

    def load(self, version: str):
        self.loads.append(version)
        model = self.models[version]
        if isinstance(model, Exception):
            raise model
        return model


def test_alias_move_swaps_the_model_and_a_failed_load_keeps_the_old_one(trained, records, monkeypatch):
    source = SwitchingSource({"1": make_model(trained, "1"), "2": RuntimeError("artifact store unreachable")}, "1")
    holder = ModelHolder(source=source)
    app = create_app(holder)
    assert asyncio.run(holder.refresh()) and holder.current.version == "1"
    source.target = "2"
    assert not asyncio.run(holder.refresh(base_delay_s=60))
    with TestClient(app) as c:
        info = c.get("/model").json()
        assert info["version"] == "1" and "artifact store unreachable" in info["last_reload_error"]
        assert c.post("/predict", json={"records": records[:1]}).json()["model_version"] == "1"
        failures = re.search(r'api_model_reloads_total\{result="failure"\} (\S+)', c.get("/metrics").text)
        assert failures and float(failures.group(1)) >= 1
    source.models["2"] = make_model(trained, "2")
    assert not asyncio.run(holder.refresh())  # within its backoff, the failed version is not fetched again
    assert source.loads == ["1", "2"]
    later = time.monotonic() + 61
    monkeypatch.setattr("api.holder.time.monotonic", lambda: later)
    assert asyncio.run(holder.refresh()) and holder.current.version == "2"
    assert holder.last_error is None


def test_a_pinned_replica_whose_registry_is_down_retries_with_capped_backoff_until_ready(trained, records, monkeypatch):
    # given a replica pinned to version 4 (as smoke starts one) while the registry is down
    source = SwitchingSource({"4": ConnectionError("tracking server refused the connection")}, "4")
    holder = ModelHolder(source=source)
    clock = [1000.0]
    monkeypatch.setattr("api.holder.time.monotonic", lambda: clock[0])
    c = TestClient(create_app(holder))  # no lifespan: this test drives the polling itself
    for _ in range(12):  # a long outage: attempts back off, but never beyond the not-ready ceiling
        asyncio.run(holder.refresh(base_delay_s=1))
        clock[0] += 31
    assert c.get("/ready").status_code == 503 and "refused the connection" in c.get("/ready").json()["detail"]
    assert len(source.loads) == 12  # 31 s apart, every attempt was due: the backoff is capped at 30 s
    # when the registry is back, the next attempt loads it and the error clears
    source.models["4"] = make_model(trained, "4")
    asyncio.run(holder.refresh(base_delay_s=1))
    assert c.get("/ready").json() == {"status": "ready", "version": "4"}
    assert c.get("/model").json()["last_reload_error"] is None


class RefusedVersion(Exception):
    def __init__(self, reason):
        self.reason = reason
        super().__init__(reason)


def test_a_refused_version_never_serves_and_is_reported(trained, records):
    # given: production serves 1, then the alias moves (as by hand in the UI) to a version that is refused
    source = SwitchingSource({"1": make_model(trained, "1"), "3": RefusedVersion("smoke failed")}, "1")
    holder = ModelHolder(source=source)
    app = create_app(holder)
    asyncio.run(holder.refresh())
    source.target = "3"
    # when
    assert not asyncio.run(holder.refresh())
    # then: 1 keeps serving, /model says why, /metrics counts it
    with TestClient(app) as c:
        info = c.get("/model").json()
        assert info["version"] == "1"
        assert info["refused"]["version"] == "3" and info["refused"]["reason"] == "smoke failed"
        assert c.post("/predict", json={"records": records[:1]}).json()["model_version"] == "1"
        assert 'api_model_reloads_total{result="refused"} 1.0' in c.get("/metrics").text


def test_an_uncompilable_pipeline_is_served_by_sklearn(trained, records):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    odd = Pipeline([("identity", FunctionTransformer()), ("model", trained.model)])
    model = make_model(trained, pipeline=odd)
    assert model.compiled is None and "sklearn path" in model.compile_note
    with TestClient(create_app(ModelHolder(model=model))) as c:
        body = c.post("/predict", json={"records": records}).json()
    assert body["predictions"] == trained.model.predict(trained.split.X_test.head(20)).tolist()
    assert np.allclose(body["probabilities"], trained.model.predict_proba(trained.split.X_test.head(20))[:, 1])


def test_models_swapped_out_are_released_and_old_versions_series_removed(trained, records):
    import gc
    import weakref

    # given: a replica that follows 12 releases, one after the other, answering each (the issue saw 50 of 50 kept)
    models = {str(v): make_model(trained, str(v)) for v in range(1, 13)}
    alive = [weakref.ref(model) for model in models.values()]
    source = SwitchingSource(models, "1")
    models = None  # only the source (the registry) holds them, as it would hold nothing
    holder = ModelHolder(source=source)
    with TestClient(create_app(holder)) as c:
        for version in range(1, 13):
            source.target = str(version)
            asyncio.run(holder.refresh())
            assert c.post("/predict", json={"records": records[:1]}).json()["model_version"] == str(version)
            c.get("/metrics")  # a flush: the version before the last is let go once it has nothing new
            source.models.pop(str(version))  # the registry's copy gone: what remains is the service's
        text = c.get("/metrics").text
    gc.collect()
    # then: only production is still held (the last one swapped out went at the next flush);
    # the series of the 2 versions retired last are still exported, none older
    assert [ref().version for ref in alive if ref() is not None] == ["12"]
    exported = set(re.findall(r'api_predictions_total\{version="(\d+)"\}', text))
    assert exported == {"10", "11", "12"}, exported


def disconnecting_request(app, path: str, sent: bytes) -> list[dict]:
    """A POST whose client leaves after `sent` of its body; what the app sent back (nothing, it should be)."""
    messages = [{"type": "http.request", "body": sent, "more_body": True}, {"type": "http.disconnect"}]
    answered: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        answered.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("10.0.0.9", 5000), "server": ("testserver", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return answered


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_a_client_leaving_mid_body_is_counted_499_never_500_nor_a_versions_error(trained, path):
    app = create_app(ModelHolder(model=make_model(trained)))
    with TestClient(app) as c:
        # when: two clients leave before their bodies arrived whole
        assert disconnecting_request(app, path, b'{"records": [') == []
        assert disconnecting_request(app, path, b'{"dataframe_records": [') == []
        text = c.get("/metrics").text
    # then: counted as disconnects, with no version (none answered), and never as a 5xx or a decision's error
    assert f'api_requests_total{{endpoint="{path}",status="499",version=""}} 2.0' in text
    assert 'status="500"' not in text
    assert 'api_decision_requests_total{version="7"} 0.0' in text
    assert 'api_decision_events_total{event="error",version="7"} 0.0' in text
