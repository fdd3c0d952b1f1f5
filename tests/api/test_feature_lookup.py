"""Serving by customer id: the real API reads a real Feast store (SQLite, and a real redis-server) by id.

The store is built by Feast itself (tests/unit/test_online_store.py's builder) from the customers the conftest
model was trained on, so a record by id and the same record in full must get the same answer, through both doors.
Then each refusal (unknown customer, a view missing, a null where the model needs a value, stale values, hostile
ids), a stale value served with a warning, and Redis hanging, stopped and back: 503 within the timeout, /ready
false, counted in /metrics, then served again.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from mlflow.models import Model

from api.app import create_app
from api.holder import ModelHolder
from api.model.loaded_model import LoadedModel
from api.model.online_store import METADATA_KEY, ServiceSpec
from api.settings import Settings

from ..unit.test_online_store import (
    ACCOUNT,
    FEAST_PYTHON,
    NOW,
    NULLS,
    PARTIAL,
    REDIS_SERVER,
    STALE,
    UNKNOWN,
    build_feast_store,
    corrupt_copy,
    free_port,
    service_record,
)
from .conftest import make_model

pytestmark = pytest.mark.skipif(
    not FEAST_PYTHON.exists() or not REDIS_SERVER.exists(), reason="needs build/feast-venv and redis-server"
)
TIMEOUT_MS = 50


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    built = build_feast_store(tmp_path_factory.mktemp("feast-api"), customers=800, seed=3)  # conftest's data
    yield built
    built.redis.stop()


def service_model(trained, stale: str = "refuse", version: str = "7") -> LoadedModel:
    """The conftest model, its MLmodel carrying the feature service record as training writes it."""
    model = make_model(trained, version)
    model.mlflow_model = Model(signature=model.mlflow_model.signature, metadata={METADATA_KEY: service_record(stale)})
    model.__post_init__()
    return model


def client_for(model: LoadedModel, url: str | None) -> TestClient:
    settings = Settings(feature_store_url=url, feature_lookup_timeout_ms=TIMEOUT_MS, decision_client_budget=1_000_000)
    return TestClient(create_app(ModelHolder(model=model), settings))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def backend(request, store, trained):
    url = store.redis.url if request.param == "redis" else f"sqlite://{store.sqlite_path}"
    with client_for(service_model(trained), url) as client:
        yield request.param, client


def known(store, trained, n: int) -> tuple[list[str], list[dict]]:
    """n customers of the test split: their ids and their records in full (as the conftest's records fixture)."""
    X = trained.split.X_test.head(n)
    ids = store.frame.customerID.iloc[X.index].tolist()
    import json

    return ids, json.loads(X.to_json(orient="records"))


def test_a_version_reads_its_service_from_mlmodels_metadata(trained, tmp_path):
    """The record in a model directory's MLmodel (as training logs it) makes the version serve by id."""
    model = make_model(trained)
    Model(signature=model.mlflow_model.signature, metadata={METADATA_KEY: service_record()}).save(tmp_path / "MLmodel")
    loaded = Model.load(str(tmp_path / "MLmodel"))
    model.mlflow_model = loaded
    model.entity_field = None
    model.__post_init__()
    assert model.plan is not None and model.entity_field == "customerID"
    assert [f.name for f in model.plan.fetched] == [f for f in ServiceSpec.parse(service_record()).feature_names]
    assert make_model(trained).plan is None  # no record: full records only, as before


def test_by_id_and_in_full_give_the_same_answer_through_both_doors(backend, store, trained):
    name, client = backend
    ids, records = known(store, trained, 20)
    full = client.post("/predict", json={"records": records})
    by_id = client.post("/predict", json={"records": [{"customerID": i} for i in ids]})
    assert full.status_code == by_id.status_code == 200, by_id.text
    assert by_id.json()["predictions"] == full.json()["predictions"]
    assert by_id.json()["probabilities"] == pytest.approx(full.json()["probabilities"], abs=1e-12)
    assert "warnings" not in by_id.json()
    # a batch mixing records in full and by id
    mixed = [records[i] if i % 2 else {"customerID": ids[i]} for i in range(len(ids))]
    assert client.post("/predict", json={"records": mixed}).json()["probabilities"] == pytest.approx(
        full.json()["probabilities"], abs=1e-12
    )
    for body in (
        {"dataframe_records": [{"customerID": i} for i in ids]},
        {"dataframe_split": {"columns": ["customerID"], "data": [[i] for i in ids]}},
        {"instances": [{"customerID": i} for i in ids]},
    ):
        answer = client.post("/invocations", json=body)
        assert answer.status_code == 200, (name, body, answer.text)
        assert answer.json()["predictions"] == full.json()["predictions"]
    assert (
        client.post("/invocations", json={"dataframe_records": records}).json()["predictions"]
        == (full.json()["predictions"])
    )
    # the same mix on MLflow's door: each record by id is read from the store, never scored as all-missing
    for key in ("dataframe_records", "instances"):
        answer = client.post("/invocations", json={key: mixed})
        assert answer.status_code == 200 and answer.json()["predictions"] == full.json()["predictions"], answer.text
    unknown = client.post("/invocations", json={"dataframe_records": [records[0], {"customerID": UNKNOWN}]})
    assert unknown.status_code == 422, unknown.text
    assert [(p["record"], p["reason"]) for p in unknown.json()["detail"]] == [(1, "unknown_customer")]
    metrics = client.get("/metrics").text
    assert 'api_feature_lookup_records_total{outcome="served"}' in metrics
    assert client.get("/ready").status_code == 200


def test_an_unknown_customer_is_a_404_listing_every_feature(backend, trained):
    _, client = backend
    answer = client.post("/predict", json={"records": [{"customerID": UNKNOWN}]})
    assert answer.status_code == 404, answer.text
    body = answer.json()
    features = list(ServiceSpec.parse(service_record()).feature_names)
    assert body["missing_features"] == features
    (problem,) = body["detail"]
    assert problem["record"] == 0 and problem["id"] == UNKNOWN and problem["reason"] == "unknown_customer"
    assert problem["missing_features"] == features
    mlflow_door = client.post("/invocations", json={"dataframe_records": [{"customerID": UNKNOWN}]})
    assert mlflow_door.status_code == 404 and mlflow_door.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow_door.json()["missing_features"] == features


def test_a_customer_missing_a_view_or_a_needed_value_is_a_422_naming_exactly_those(backend, store, trained):
    _, client = backend
    ids, _ = known(store, trained, 2)
    answer = client.post("/predict", json={"records": [{"customerID": ids[0]}, {"customerID": PARTIAL}]})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["missing_features"] == ACCOUNT
    (problem,) = body["detail"]
    assert (problem["record"], problem["id"], problem["reason"]) == (1, PARTIAL, "missing_features")
    # a stored null where the model needs a value (MonthlyCharges); the blank TotalCharges is the model's missing value
    nulls = client.post("/predict", json={"records": [{"customerID": NULLS}]})
    assert nulls.status_code == 422 and nulls.json()["missing_features"] == ["MonthlyCharges"]
    # unknown and partial together: not every record unknown, so 422, each record named
    both = client.post("/predict", json={"records": [{"customerID": UNKNOWN}, {"customerID": PARTIAL}]})
    assert both.status_code == 422 and [p["reason"] for p in both.json()["detail"]] == [
        "unknown_customer",
        "missing_features",
    ]


def test_stale_values_are_refused_or_served_with_a_warning(backend, store, trained):
    name, client = backend
    answer = client.post("/predict", json={"records": [{"customerID": STALE}]})
    assert answer.status_code == 422, answer.text
    (problem,) = answer.json()["detail"]
    assert problem["reason"] == "stale_features" and set(problem["stale_features"]) == set(ACCOUNT)
    assert all(39 * 86400 < age < 41 * 86400 for age in problem["stale_features"].values())
    url = store.redis.url if name == "redis" else f"sqlite://{store.sqlite_path}"
    with client_for(service_model(trained, stale="warn"), url) as warned:
        served = warned.post("/predict", json={"records": [{"customerID": STALE}]})
        assert served.status_code == 200, served.text
        (warning,) = served.json()["warnings"]
        assert warning["record"] == 0 and warning["id"] == STALE and set(warning["stale_features"]) == set(ACCOUNT)
        door = warned.post("/invocations", json={"dataframe_records": [{"customerID": STALE}]})
        assert door.status_code == 200 and door.json()["warnings"][0]["id"] == STALE
        assert 'api_feature_lookup_records_total{outcome="stale_served"} 2.0' in warned.get("/metrics").text


HOSTILE = ["x" * 65, "a\x00b", "Ωmega", "x\r\nFLUSHALL", "", "a b", 12345, "' OR 1=1 --"]


def test_hostile_ids_are_refused_per_record_and_reach_no_store(backend, store):
    _, client = backend
    keys_before = redis.Redis.from_url(store.redis.url).dbsize()
    records = [{"customerID": value} for value in HOSTILE]
    answer = client.post("/predict", json={"records": records})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert [p["record"] for p in detail] == list(range(len(HOSTILE)))
    assert {p["reason"] for p in detail} == {"invalid_id"}
    assert all(len(str(p["id"])) < 80 for p in detail)  # a long id is echoed as a short prefix
    door = client.post("/invocations", json={"dataframe_records": records})
    assert door.status_code == 422 and len(door.json()["detail"]) == len(HOSTILE)
    assert redis.Redis.from_url(store.redis.url).dbsize() == keys_before  # nothing flushed
    assert client.post("/predict", json={"records": [{}]}).status_code == 422  # no id, no features


def test_a_partial_record_names_the_missing_features(backend, store, trained):
    _, client = backend
    _, records = known(store, trained, 1)
    partial = {k: v for k, v in records[0].items() if k != "tenure"}
    answer = client.post("/predict", json={"records": [partial]})
    assert answer.status_code == 422 and "tenure" in answer.text


def test_without_a_store_records_by_id_are_503_and_full_records_still_served(trained, store):
    ids, records = known(store, trained, 1)
    with client_for(service_model(trained), None) as client:
        answer = client.post("/predict", json={"records": [{"customerID": ids[0]}]})
        assert answer.status_code == 503 and answer.json()["reason"] == "not_configured"
        assert client.post("/predict", json={"records": records}).status_code == 200
        assert client.get("/ready").status_code == 503
    port = free_port()
    with client_for(service_model(trained), f"redis://:hunter2@127.0.0.1:{port}/0") as client:
        answer = client.post("/predict", json={"records": [{"customerID": ids[0]}]})
        assert answer.status_code == 503 and answer.json()["reason"] == "unreachable"
        assert "hunter2" not in answer.text and "hunter2" not in client.get("/ready").text


def test_redis_hanging_stopped_and_back(store, trained):
    """SIGSTOP: 503 (timeout) within the timeout, /ready 503; SIGCONT: served. Stopped: 503; restarted: served."""
    ids, records = known(store, trained, 1)
    by_id = {"records": [{"customerID": ids[0]}]}
    server = store.redis
    with client_for(service_model(trained), server.url) as client:
        assert client.post("/predict", json=by_id).status_code == 200
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = client.post("/predict", json=by_id)
            took = time.monotonic() - started
            assert answer.status_code == 503 and answer.json()["reason"] == "timeout", answer.text
            assert took < 0.5, took  # the lookup timeout is 50 ms
            assert client.get("/ready").status_code == 503
            assert client.post("/predict", json={"records": records}).status_code == 200  # full records served
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert _served_again(client, by_id)
        assert client.get("/ready").status_code == 200
        redis.Redis.from_url(server.url).save()  # the restarted server loads what was materialized
        server.stop()
        started = time.monotonic()
        answer = client.post("/predict", json=by_id)
        assert answer.status_code == 503 and answer.json()["reason"] == "unreachable", answer.text
        assert time.monotonic() - started < 0.5
        time.sleep(0.6)  # past Lookup.RETRY_S: /ready asks the store itself
        assert client.get("/ready").status_code == 503
        server.start()
        assert _served_again(client, by_id)
        assert client.get("/ready").status_code == 200
        metrics = client.get("/metrics").text
        for reason in ("timeout", "unreachable"):
            line = next(
                x
                for x in metrics.splitlines()
                if x.startswith(f'api_feature_store_unavailable_total{{reason="{reason}"}}')
            )
            assert float(line.split()[-1]) >= 1


def _served_again(client: TestClient, body: dict, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if client.post("/predict", json=body).status_code == 200:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("name", ["sqlite", "redis"])
def test_materializing_while_serving_loses_no_request(store, trained, name):
    """Feast materializes the same store again (its own process) while records by id are answered: all 200."""
    import subprocess
    import threading

    ids, _ = known(store, trained, 50)
    url = store.redis.url if name == "redis" else f"sqlite://{store.sqlite_path}"
    statuses: list[int] = []
    command = [str(FEAST_PYTHON), str(store.folder / "feast_script.py"), str(store.folder / name),
               str(store.folder / "data"), "build"]  # fmt: skip
    with client_for(service_model(trained), url) as client:
        job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        writer = threading.Thread(target=job.wait)
        writer.start()
        i = 0
        while writer.is_alive():
            answer = client.post("/predict", json={"records": [{"customerID": ids[i % len(ids)]}]})
            statuses.append(answer.status_code)
            i += 1
        writer.join()
    assert job.returncode == 0, job.stderr.read() if job.stderr else ""
    assert len(statuses) > 50 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_a_rollout_reads_features_for_either_side_and_the_shadow_scores_full_copies(store, trained):
    """Canary at 50 %: customers by id answered by both versions; shadow: the canary scores copies with features."""
    import asyncio

    from api.release.traffic import Target, Traffic

    from .test_canary import RolloutSource, _scorer, shadow_metrics

    ids, _ = known(store, trained, 30)
    settings = Settings(feature_store_url=store.redis.url, decision_client_budget=1_000_000)
    for traffic in (
        Traffic("canary", "2", 50, salt="3f" * 16),
        Traffic("shadow", "2", shadow_share=1.0, salt="3f" * 16),
    ):
        models = {v: service_model(trained, version=v) for v in ("1", "2")}
        holder = ModelHolder(source=RolloutSource(models, Target("1", "2", traffic)))
        asyncio.run(holder.refresh())
        with TestClient(create_app(holder, settings)) as client:
            client.get("/health")
            if traffic.mode == "shadow":
                _scorer(client)  # copies offered before the scorer runs are dropped, not queued
            versions = set()
            for i in ids:
                for door, body in (("/predict", {"records": [{"customerID": i}]}),
                                   ("/invocations", {"dataframe_records": [{"customerID": i}]})):  # fmt: skip
                    answer = client.post(door, json=body)
                    assert answer.status_code == 200, answer.text
                    versions.add(answer.headers["X-Model-Version"])
            if traffic.mode == "canary":
                assert versions == {"1", "2"}
            else:
                text = shadow_metrics(client, until=2 * len(ids))
                assert f'api_shadow_requests_total{{outcome="scored",version="2"}} {2.0 * len(ids)}' in text
                assert 'api_shadow_decision_total{event="refused",version="2"}' not in text or (
                    'api_shadow_decision_total{event="refused",version="2"} 0.0' in text
                )


def _metric(client: TestClient, name: str, label: str) -> float:
    prefix = f"{name}{{{label}}} "
    line = next((x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix)), None)
    return 0.0 if line is None else float(line.split()[-1])


@pytest.mark.parametrize("name", ["sqlite", "redis"])
def test_unreadable_stored_values_are_refused_by_name_and_the_store_stays_up(store, trained, tmp_path, name):
    """Bad bytes in the store (tests/unit/test_online_store.py's corrupt_copy): each such record a 422
    `unreadable_features` naming exactly those features, never a 500, never a 503 for the records after it."""
    bad = corrupt_copy(store, name, tmp_path)
    settings = Settings(
        feature_store_url=bad.url,
        feast_project=bad.project,
        feature_lookup_timeout_ms=TIMEOUT_MS,
        decision_client_budget=1_000_000,
    )
    with TestClient(create_app(ModelHolder(model=service_model(trained)), settings)) as client:
        for entity, features in bad.unreadable.items():
            answer = client.post("/predict", json={"records": [{"customerID": entity}]})
            assert answer.status_code == 422, (entity, answer.text)
            body = answer.json()
            (problem,) = body["detail"]
            assert problem["reason"] == "unreadable_features" and set(problem["unreadable_features"]) == features
            assert set(body["unreadable_features"]) == features and body["missing_features"] == []
            good = client.post("/predict", json={"records": [{"customerID": bad.good}]})
            assert good.status_code == 200, good.text
        door = client.post("/invocations", json={"dataframe_records": [{"customerID": entity}]})
        assert door.status_code == 422 and door.json()["detail"][0]["reason"] == "unreadable_features"
        assert client.get("/ready").status_code == 200
        counted = _metric(client, "api_feature_lookup_records_total", 'outcome="unreadable_features"')
        assert counted == len(bad.unreadable) + 1
        # a value stamped a day ahead is not fresh: stale, its age negative
        future = client.post("/predict", json={"records": [{"customerID": bad.future}]})
        assert future.status_code == 422, future.text
        (problem,) = future.json()["detail"]
        assert problem["reason"] == "stale_features" and "in the future" in problem["message"]
        assert set(problem["stale_features"]) == set(ACCOUNT)
        ahead = (NOW + timedelta(days=1) - datetime.now(UTC)).total_seconds()  # stamped when the module loaded
        assert all(-ahead - 60 < age < -ahead + 60 for age in problem["stale_features"].values())
        if bad.old_feature is not None:  # SQLite: one feature 40 days old makes its view stale
            old = client.post("/predict", json={"records": [{"customerID": bad.old_feature}]})
            assert old.status_code == 422 and old.json()["detail"][0]["reason"] == "stale_features", old.text


def test_a_request_is_404_only_when_every_record_is_unknown(backend, store, trained):
    _, client = backend
    ids, records = known(store, trained, 1)
    for first in ({"customerID": ids[0]}, records[0]):  # a known customer by id, or a record in full
        answer = client.post("/predict", json={"records": [first, {"customerID": UNKNOWN}]})
        assert answer.status_code == 422, answer.text
        (problem,) = answer.json()["detail"]
        assert (problem["record"], problem["reason"]) == (1, "unknown_customer")
    door = client.post("/invocations", json={"dataframe_records": [{"customerID": ids[0]}, {"customerID": UNKNOWN}]})
    assert door.status_code == 422 and door.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_many_refused_records_name_fifty_and_count_every_one(backend):
    _, client = backend
    records = [{"customerID": f"NOPE-{i:04d}"} for i in range(100)]
    before = _metric(client, "api_feature_lookup_records_total", 'outcome="unknown_customer"')
    answer = client.post("/predict", json={"records": records})
    assert answer.status_code == 404, answer.text
    body = answer.json()
    assert [p["record"] for p in body["detail"]] == list(range(50)) and body["truncated"] == 50
    assert len(answer.content) < 80_000  # all 100 named: some 120 kB
    after = _metric(client, "api_feature_lookup_records_total", 'outcome="unknown_customer"')
    assert after - before == 100


@pytest.mark.parametrize("secret", ["p@ssw0rd", "xx yzzy", "q'uotezz", "hunter2"])
def test_a_redis_password_is_in_no_503_body(trained, store, secret):
    """In the URL's user part or its query, no piece of the password reaches a 503 body or /ready."""
    ids, _ = known(store, trained, 1)
    port = free_port()
    pieces = [secret, *(piece for piece in re.split(r"[ '@]", secret) if len(piece) >= 3)]
    for url in (f"redis://:{secret}@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0?password={secret}"):
        with client_for(service_model(trained), url) as client:
            answer = client.post("/predict", json={"records": [{"customerID": ids[0]}]})
            assert answer.status_code == 503 and answer.json()["reason"] == "unreachable", answer.text
            assert f"redis online store at 127.0.0.1:{port}/0" in answer.text and "password" not in answer.text
            door = client.post("/invocations", json={"dataframe_records": [{"customerID": ids[0]}]})
            assert door.status_code == 503
            ready = client.get("/ready").text
            for text in (answer.text, door.text, ready):
                assert not [piece for piece in pieces if piece in text], text
