"""Both doors, one request path: the same customers through /predict and /invocations meet the same versions,
leave the same metrics (live counts, drift bins, release decisions) and the same shadow counts."""

import asyncio
import time

import orjson
from fastapi.testclient import TestClient

from api import invocation_route, shadow
from api.app import create_app
from api.decisions import Decisions
from api.holder import ModelHolder
from api.invocation_route import records_body
from api.model.drift import drift_bins
from api.release.traffic import Target, Traffic
from api.request_path import INLINE_RECORDS
from api.settings import Settings
from api.shadow_tally import copy_of
from gates.profile import profile

from .conftest import make_model
from .test_canary import RolloutSource, _scorer, shadow_metrics

SALT = "3f" * 16
ROOMY = Settings(decision_client_budget=1_000_000)
# What a request leaves behind, whichever door: not the HTTP series (they name the door) nor latencies' sums.
COMPARED = (
    "api_predictions_total",
    "api_positive_predictions_total",
    "api_score_bucket",
    "api_score_count",
    "api_feature_values_total",
    "api_decision_requests_total",
    "api_decision_events_total",
    "api_decision_latency_seconds_count",
    "api_shadow_requests_total",
    "api_shadow_agreement_total",
    "api_shadow_decision_total",
    "api_shadow_production_score_count",
)


def serving(trained, traffic: Traffic) -> ModelHolder:
    """Production 1 and canary 2, each with its own drift bins, records carrying the customer's id."""
    X = trained.split.X_train
    kinds = {c: "numeric" if X[c].dtype.kind == "f" else "categorical" for c in X.columns}
    models = {}
    for version in ("1", "2"):
        model = make_model(trained, version)
        model.entity_field = "customerID"
        model.drift_bins = drift_bins(profile(X, kinds), list(X.columns))
        model.__post_init__()
        models[version] = model
    holder = ModelHolder(source=RolloutSource(models, Target("1", "2", traffic)))
    asyncio.run(holder.refresh())
    return holder


def send(client, door: str, record: dict) -> str:
    if door == "/invocations (CSV)":  # MLflow's slow path
        csv = "\n".join([",".join(record), ",".join("" if v is None else str(v) for v in record.values())])
        answer = client.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    else:
        body = {"records": [record]} if door == "/predict" else {"dataframe_records": [record]}
        answer = client.post(door, json=body)
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Model-Version"]


def compared(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith(COMPARED))


def settled(client, until: int, timeout_s: float = 15.0) -> str:
    """/metrics once the shadow scored `until` copies and its counts stop moving: tallies and the copies' live
    values arrive from the scorer on their own cadence (about every second), not together."""
    text = shadow_metrics(client, until=until)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.2)
        again = client.get("/metrics").text
        if compared(again) == compared(text):
            return again
        text = again
    return text


def customers(records: list[dict], n: int) -> list[dict]:
    return [{**records[i % len(records)], "customerID": f"cust-{i}"} for i in range(n)]


def test_a_canary_split_sees_the_same_versions_and_leaves_the_same_metrics_through_either_door(trained, records):
    # given: two replicas of one rollout, 40 % canary
    traffic = Traffic("canary", "2", 40, salt=SALT)
    replicas = {door: serving(trained, traffic) for door in ("/predict", "/invocations", "/invocations (CSV)")}
    versions, metrics = {}, {}
    for door, holder in replicas.items():
        with TestClient(create_app(holder, ROOMY)) as client:
            # when: the same customers come in, each replica by one door
            versions[door] = [send(client, door, record) for record in customers(records, 40)]
            metrics[door] = client.get("/metrics").text
    # then: every customer met the same version, and both versions answered some
    assert versions["/predict"] == versions["/invocations"] == versions["/invocations (CSV)"]
    assert set(versions["/predict"]) == {"1", "2"}
    # and the counts are the same: predictions, scores, drift bins, decisions
    assert compared(metrics["/predict"]) == compared(metrics["/invocations"]) == compared(metrics["/invocations (CSV)"])
    assert any(line.startswith('api_feature_values_total{bin="') for line in compared(metrics["/predict"]))
    assert 'api_predictions_total{version="2"} 0.0' not in metrics["/invocations"]


def test_a_shadow_gets_the_same_copies_through_either_door(trained, records):
    # given: two replicas of one rollout whose canary scores a copy of every request
    traffic = Traffic("shadow", "2", shadow_share=1.0, salt=SALT)
    replicas = {door: serving(trained, traffic) for door in ("/predict", "/invocations")}
    metrics = {}
    for door, holder in replicas.items():
        with TestClient(create_app(holder, ROOMY)) as client:
            client.get("/health")
            _scorer(client)  # started off the request path, within a second
            # when: the same customers come in, each replica by one door
            assert {send(client, door, record) for record in customers(records, 20)} == {"1"}
            metrics[door] = settled(client, until=20)
    # then: the canary scored the same copies, agreed as often, and counted the same live values
    assert 'api_shadow_requests_total{outcome="scored",version="2"} 20.0' in metrics["/invocations"]
    assert compared(metrics["/predict"]) == compared(metrics["/invocations"])


class _NoQuickReading:
    """A model's quick /invocations reading that takes no body: MLflow's path reads every request."""

    def from_records(self, *_):
        return None

    def from_split(self, *_):
        return None


def test_a_canary_answered_on_the_slow_path_leaves_the_same_scores_and_drift_bins(trained, records):
    # given: production reads /invocations only on MLflow's path; the canary can take the quick one
    traffic = Traffic("canary", "2", 40, salt=SALT)
    replicas = {door: serving(trained, traffic) for door in ("/predict", "/invocations")}
    metrics = {}
    for door, holder in replicas.items():
        holder.current.invocation_types = _NoQuickReading()
        with TestClient(create_app(holder, ROOMY)) as client:
            # when: the same customers come in, each replica by one door
            assert {send(client, door, record) for record in customers(records, 40)} == {"1", "2"}
            metrics[door] = client.get("/metrics").text
    # then: the canary's answers are in its score histogram and drift bins on both doors
    assert compared(metrics["/predict"]) == compared(metrics["/invocations"])
    assert any(line.startswith('api_score_count{version="2"}') for line in compared(metrics["/invocations"]))


def failing(model) -> None:
    """The model fails on whatever it is given (not a refusal of the client's values: the version's error)."""

    def fail(*_):
        raise RuntimeError("the version is broken")

    model.predict_columns = model.predict_frame = model.labels = fail


def test_a_canary_failing_is_its_error_through_either_door_and_the_answers_stay_those_of_each_door(
    trained, records, monkeypatch
):
    # given: a canary that fails on every request, 40 % canary
    counted = []
    count = Decisions.count
    monkeypatch.setattr(
        Decisions, "count", lambda self, v, s, n, e=None: (counted.append((v, n, e)), count(self, v, s, n, e))
    )
    traffic = Traffic("canary", "2", 40, salt=SALT)
    events, statuses = {}, {}
    for door in ("/predict", "/invocations", "/invocations (CSV)"):
        holder = serving(trained, traffic)
        failing(holder.canary)
        counted.clear()
        with TestClient(create_app(holder, ROOMY), raise_server_exceptions=False) as client:
            # when: the same customers come in, each replica by one door
            statuses[door] = {post(client, door, record).status_code for record in customers(records, 40)}
        events[door] = sorted(counted, key=repr)
    # then: the canary's failures are counted as its errors, one record each, whichever door
    assert ("2", 1, "error") in events["/predict"]
    assert events["/predict"] == events["/invocations"] == events["/invocations (CSV)"]
    # and each door answers as before: /predict a 500, /invocations in MLflow's words, a 400
    assert statuses == {"/predict": {200, 500}, "/invocations": {200, 400}, "/invocations (CSV)": {200, 400}}


def test_a_failure_after_the_slow_path_chose_the_canary_is_its_error_over_every_record(trained, records, monkeypatch):
    # given: a canary chosen on MLflow's path, and its scoring raising there
    counted = []
    monkeypatch.setattr(Decisions, "count", lambda self, v, s, n, e=None: counted.append((v, n, e)))
    monkeypatch.setattr(invocation_route, "score", lambda *_: (_ for _ in ()).throw(RuntimeError("broken")))
    holder = serving(trained, Traffic("canary", "2", 100, salt=SALT))
    three = customers(records, 3)
    csv = "\n".join([",".join(three[0]), *(",".join("" if v is None else str(v) for v in r.values()) for r in three)])
    with TestClient(create_app(holder, ROOMY), raise_server_exceptions=False) as client:
        # when: a three-record CSV request comes in
        answer = client.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    # then: a 500, counted as the canary's error over its three records
    assert answer.status_code == 500
    assert counted == [("2", 3, "error")]


def test_a_shadow_copy_that_cannot_be_made_is_the_canarys_loss_never_the_clients(trained, records, monkeypatch):
    # given: a shadowed canary whose copies cannot be made
    def broken(_):
        raise RuntimeError("no copy")

    monkeypatch.setattr(invocation_route, "records_body", broken)
    holder = serving(trained, Traffic("shadow", "2", shadow_share=1.0, salt=SALT))
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        _scorer(client)
        # when: a request comes in
        assert send(client, "/invocations", customers(records, 1)[0]) == "1"
        text = client.get("/metrics").text
    # then: production answered it and counted it; the copy is counted failed
    assert 'api_predictions_total{version="1"} 1.0' in text
    assert 'api_shadow_requests_total{outcome="failed",version="2"} 1.0' in text


def test_a_large_requests_shadow_copy_is_made_off_the_event_loop(trained, records, monkeypatch):
    # given: a shadowed canary, and a record of where each copy is made
    made_on_loop = []

    def spying(columns):
        try:
            asyncio.get_running_loop()
            made_on_loop.append(True)
        except RuntimeError:
            made_on_loop.append(False)
        return records_body(columns)

    monkeypatch.setattr(invocation_route, "records_body", spying)
    holder = serving(trained, Traffic("shadow", "2", shadow_share=1.0, salt=SALT))
    for model in (holder.current, holder.canary):
        model.max_batch_size = 5000
    many = customers(records, 3000)
    assert len(orjson.dumps({"dataframe_records": many})) > invocation_route.INLINE_BODY_BYTES
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        _scorer(client)
        # when: a large request and a small one come in
        assert client.post("/invocations", json={"dataframe_records": many}).status_code == 200
        assert send(client, "/invocations", many[0]) == "1"
    # then: the large one's copy was made in a worker thread, the small one's on the loop
    assert made_on_loop == [False, True]


def test_a_large_predict_batchs_shadow_copy_is_made_off_the_event_loop(trained, records, monkeypatch):
    # given: a shadowed canary, and a record of where each copy is made
    made_on_loop = []

    def spying(body, labels, probabilities):
        try:
            asyncio.get_running_loop()
            made_on_loop.append(True)
        except RuntimeError:
            made_on_loop.append(False)
        return copy_of(body, labels, probabilities)

    monkeypatch.setattr(shadow, "copy_of", spying)
    holder = serving(trained, Traffic("shadow", "2", shadow_share=1.0, salt=SALT))
    for model in (holder.current, holder.canary):
        model.max_batch_size = 5000
    many = customers(records, INLINE_RECORDS + 1)
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        _scorer(client)
        # when: a batch larger than the loop predicts comes in, then a one-record request
        assert client.post("/predict", json={"records": many}).status_code == 200
        assert send(client, "/predict", many[0]) == "1"
    # then: the large one's copy was made in a worker thread, the small one's on the loop
    assert made_on_loop == [False, True]


def post(client, door: str, record: dict):
    if door == "/invocations (CSV)":
        csv = "\n".join([",".join(record), ",".join("" if v is None else str(v) for v in record.values())])
        return client.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    body = {"records": [record]} if door == "/predict" else {"dataframe_records": [record]}
    return client.post(door, json=body)
