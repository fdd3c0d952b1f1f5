"""Live release decisions: what each version causes, counted once per request, per client within its budget."""

import asyncio
import time

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.metrics import UNCOUNTED_REASONS
from api.release.traffic import Target, Traffic
from api.settings import Settings
from api.shadow_tally import Tally, copy_of

from .conftest import make_model
from .test_canary import RolloutSource
from .test_live_metrics import sample

SALT = "7c" * 16
TOKEN = "s3cret-operator-token"
ROOMY = Settings(decision_client_budget=1_000_000, model_info_token=TOKEN)


def rollout(trained, traffic: Traffic, entity: str | None = "customerID", **models) -> ModelHolder:
    both = {"1": make_model(trained, "1"), "2": make_model(trained, "2"), **models}
    for model in both.values():
        model.entity_field = entity
        model.__post_init__()
    holder = ModelHolder(source=RolloutSource(both, Target("1", "2", traffic)))
    asyncio.run(holder.refresh())
    return holder


def decisions(client) -> dict:
    text = client.get("/metrics").text

    def value(name: str, **labels: str) -> float:
        try:
            return sample(text, name, **labels)
        except AssertionError:
            return 0.0

    return {
        "text": text,
        "requests": {v: value("api_decision_requests_total", version=v) for v in ("1", "2", "7")},
        "events": {
            (v, e): value("api_decision_events_total", version=v, event=e)
            for v in ("1", "2", "7")
            for e in ("error", "refused", "positive")
        },
        "uncounted": {r: value("api_decision_uncounted_total", reason=r) for r in UNCOUNTED_REASONS},
        "latency_count": {v: value("api_decision_latency_seconds_count", version=v) for v in ("1", "2", "7")},
        "latency_sum": {v: value("api_decision_latency_seconds_sum", version=v) for v in ("1", "2", "7")},
    }


def with_customer(record: dict, customer: object) -> dict:
    return {**record, "customerID": customer}


# --- the split, on both doors ------------------------------------------------------------------------


def test_both_doors_give_a_customer_the_same_version(trained, records):
    holder = rollout(trained, Traffic("canary", "2", 40, salt=SALT))
    with TestClient(create_app(holder, ROOMY)) as client:
        sides = {}
        for i in range(60):
            record = with_customer(records[i % len(records)], f"cust-{i}")
            predict = client.post("/predict", json={"records": [record]}).headers["X-Model-Version"]
            fast = client.post("/invocations", json={"dataframe_records": [record]})
            split = client.post(
                "/invocations",
                json={"dataframe_split": {"columns": list(record), "data": [list(record.values())]}},
            )
            csv = "\n".join([",".join(record), ",".join(str(v) if v is not None else "" for v in record.values())])
            slow = client.post("/invocations", content=csv, headers={"content-type": "text/csv"})
            assert fast.status_code == split.status_code == slow.status_code == 200, slow.text
            sides[f"cust-{i}"] = {predict, fast.headers["X-Model-Version"], split.headers["X-Model-Version"],
                                  slow.headers["X-Model-Version"]}  # fmt: skip
    assert all(len(versions) == 1 for versions in sides.values())  # every door, the same side
    assert {v for versions in sides.values() for v in versions} == {"1", "2"}
    traffic = holder.traffic
    assert all(versions == {"2" if traffic.to_canary([c]) else "1"} for c, versions in sides.items())


def test_the_split_is_keyed_by_the_salt_not_by_anything_the_client_sends(trained, records):
    def sides(salt: str) -> dict[str, str]:
        holder = rollout(trained, Traffic("canary", "2", 50, salt=salt))
        with TestClient(create_app(holder, ROOMY)) as client:
            return {
                c: client.post("/predict", json={"records": [with_customer(records[0], c)]}).headers["X-Model-Version"]
                for c in (f"cust-{i}" for i in range(40))
            }

    first, again, other = sides(SALT), sides(SALT), sides("aa" * 16)
    assert first == again  # same salt, same id: same side
    assert first != other  # the rollout's secret decides, not the id alone


def test_a_batch_goes_to_the_canary_only_when_every_customer_does(trained, records):
    holder = rollout(trained, Traffic("canary", "2", 40, salt=SALT))
    traffic = holder.traffic
    canary = [c for c in (f"cust-{i}" for i in range(200)) if traffic.to_canary([c])][:3]
    production = next(c for c in (f"cust-{i}" for i in range(200)) if not traffic.to_canary([c]))
    with TestClient(create_app(holder, ROOMY)) as client:

        def version(customers: list, door: str = "/predict") -> str:
            batch = [with_customer(records[i], c) for i, c in enumerate(customers)]
            body = {"records": batch} if door == "/predict" else {"dataframe_records": batch}
            answer = client.post(door, json=body)
            assert answer.status_code == 200
            return answer.headers["X-Model-Version"]

        assert version(canary) == "2" and version(canary, "/invocations") == "2"
        assert version([*canary, production]) == "1" and version([*canary, production], "/invocations") == "1"
        assert version([production, *canary]) == "1"


def test_without_a_customer_field_the_side_is_drawn_and_x_request_id_is_ignored(trained, records):
    holder = rollout(trained, Traffic("canary", "2", 50, salt=SALT), entity=None)
    with TestClient(create_app(holder, ROOMY)) as client:
        same_id = {"X-Request-Id": "always-the-same"}
        predict = [
            client.post("/predict", json={"records": records[:1]}, headers=same_id).headers["X-Model-Version"]
            for _ in range(40)
        ]
        invocations = [
            client.post("/invocations", json={"dataframe_records": records[:1]}, headers=same_id).headers[
                "X-Model-Version"
            ]
            for _ in range(40)
        ]
    assert set(predict) == {"1", "2"} and set(invocations) == {"1", "2"}


# --- counting -------------------------------------------------------------------------------------------


def test_a_10000_record_request_counts_one_unit(trained, records):
    model = make_model(trained, "7", max_batch_size=10_000)
    with TestClient(create_app(ModelHolder(model=model), ROOMY)) as client:
        before = decisions(client)
        assert before["requests"]["7"] == 0 and "api_decision_requests_total" in before["text"]  # at zero already
        big = (records * 500)[:10_000]
        assert client.post("/predict", json={"records": big}).status_code == 200
        after_predict = decisions(client)
        assert client.post("/invocations", json={"dataframe_records": big}).status_code == 200
        after = decisions(client)
    assert after_predict["requests"]["7"] == 1 and after["requests"]["7"] == 2
    assert after["latency_count"]["7"] == 2
    assert sample(after["text"], "api_predictions_total", version="7") == 20_000  # the records, as before


def test_positive_counts_the_one_record_drawn_from_each_answer(trained, records):
    model = make_model(trained, "7")
    with TestClient(create_app(ModelHolder(model=model), ROOMY)) as client:
        labels = [client.post("/predict", json={"records": [r]}).json()["predictions"][0] for r in records]
        labels += [
            client.post("/invocations", json={"dataframe_records": [r]}).json()["predictions"][0] for r in records
        ]
        counted = decisions(client)
    positives = sum(label == "Yes" for label in labels)
    assert 0 < positives < len(labels)
    assert counted["requests"]["7"] == len(labels) and counted["events"][("7", "positive")] == positives


async def _asgi_post(app, path: str, chunks: list[bytes], pause_s: float) -> tuple[int, bytes]:
    """POST a body to the ASGI app in chunks, pausing between them: a client trickling its body in."""
    sent = {"i": 0}
    answer: dict = {"body": b""}

    async def receive():
        i = sent["i"]
        if i:
            await asyncio.sleep(pause_s)
        sent["i"] += 1
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("192.0.2.1", 40000), "server": ("test", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return answer["status"], answer["body"]


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_a_body_trickled_in_slowly_is_not_the_versions_latency(trained, records, path):
    model = make_model(trained, "7")
    key = "records" if path == "/predict" else "dataframe_records"
    body = orjson.dumps({key: records[:2]})
    chunks = [body[i : i + 40] for i in range(0, len(body), 40)][:6]
    chunks[-1] = body[40 * 5 :]
    with TestClient(create_app(ModelHolder(model=model), ROOMY)) as client:
        app = client.app
        started = time.perf_counter()
        status, _ = client.portal.call(_asgi_post, app, path, chunks, 0.1)  # 5 pauses: half a second
        took = time.perf_counter() - started
        counted = decisions(client)
    assert status == 200 and took >= 0.5
    assert counted["latency_count"]["7"] == 1
    assert counted["latency_sum"]["7"] < 0.1  # the model's few milliseconds, not the client's half second
    latency = sample(counted["text"], "api_request_latency_seconds_sum", endpoint=path, version="7")
    assert latency >= 0.5  # the HTTP latency still shows the whole request


def test_a_client_over_its_budget_is_answered_but_no_longer_counted(trained, records):
    model = make_model(trained, "7")
    settings = Settings(decision_client_budget=3)
    with TestClient(create_app(ModelHolder(model=model), settings)) as client:
        _decisions_of(client).budget.clock = lambda: 1.0  # one second that does not end
        answers = [client.post("/predict", json={"records": records[:1]}) for _ in range(6)]
        answers += [client.post("/invocations", json={"dataframe_records": records[:1]}) for _ in range(4)]
        counted = decisions(client)
    assert all(a.status_code == 200 for a in answers)
    assert counted["requests"]["7"] == 3 and counted["latency_count"]["7"] == 3
    assert counted["uncounted"] == {"client_budget": 7, "client_table_full": 0}


def test_behind_a_trusted_proxy_a_forged_forwarded_for_does_not_make_a_new_client(trained, records):
    model = make_model(trained, "7")
    settings = Settings(decision_client_budget=2, trusted_proxy_hops=1)
    with TestClient(create_app(ModelHolder(model=model), settings)) as client:
        _decisions_of(client).budget.clock = lambda: 1.0
        for i in range(6):  # one client, a new forged entry each time; the proxy appends what it saw
            forged = {"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.7"}
            assert client.post("/predict", json={"records": records[:1]}, headers=forged).status_code == 200
        one_client = decisions(client)
        for i in range(4):  # four clients, as the proxy saw them
            honest = {"X-Forwarded-For": f"203.0.113.{100 + i}"}
            client.post("/predict", json={"records": records[:1]}, headers=honest)
        four = decisions(client)
    assert one_client["requests"]["7"] == 2 and one_client["uncounted"]["client_budget"] == 4
    assert four["requests"]["7"] == 6


def test_a_full_table_of_clients_leaves_new_clients_uncounted(trained, records):
    model = make_model(trained, "7")
    with TestClient(create_app(ModelHolder(model=model), Settings(trusted_proxy_hops=1))) as client:
        budget = _decisions_of(client).budget
        budget.clock, budget.max_clients = (lambda: 1.0), 2
        for i in range(4):
            client.post("/predict", json={"records": records[:1]}, headers={"X-Forwarded-For": f"203.0.113.{i}"})
        counted = decisions(client)
    assert counted["requests"]["7"] == 2 and counted["uncounted"]["client_table_full"] == 2


def test_a_5xx_is_the_answering_versions_error(trained, records):
    model = make_model(trained, "7")

    def broken(columns):
        raise RuntimeError("the model fell over")

    with TestClient(create_app(ModelHolder(model=model), ROOMY), raise_server_exceptions=False) as client:
        assert client.post("/predict", json={"records": records[:1]}).status_code == 200
        model.predict_columns = broken
        answer = client.post("/predict", json={"records": records[:1]})
        counted = decisions(client)
    assert answer.status_code == 500
    assert counted["requests"]["7"] == 2 and counted["events"][("7", "error")] == 1


def _unscorable(model):
    def refuse(*_):
        raise ValueError("cannot score")

    model.predict_columns = refuse
    model.labels = refuse
    model.predict_frame = refuse
    return model


def test_a_canary_refusal_counts_only_when_production_accepted_the_body(trained, records):
    holder = rollout(trained, Traffic("canary", "2", 100, salt=SALT))
    _unscorable(holder.canary)
    with TestClient(create_app(holder, ROOMY)) as client:
        refused = client.post("/predict", json={"records": [with_customer(records[0], "c1")]})
        refused_inv = client.post("/invocations", json={"dataframe_records": [with_customer(records[0], "c1")]})
        first = decisions(client)
        # a body production cannot read: it answers the refusal, no side is decided, nothing counts
        unreadable = client.post("/predict", json={"records": [{**records[0], "shoe_size": 44}]})
        unreadable_inv = client.post("/invocations", content=b"{", headers={"content-type": "application/json"})
        second = decisions(client)
        # production would not have scored it either: not the canary's refusal
        _unscorable(holder.current)
        both = client.post("/predict", json={"records": [with_customer(records[0], "c1")]})
        third = decisions(client)
    assert refused.status_code == 422 and refused.headers["X-Model-Version"] == "2"
    assert refused_inv.status_code == 400 and refused_inv.headers["X-Model-Version"] == "2"
    assert first["events"][("2", "refused")] == 2 and first["requests"]["2"] == 2
    assert unreadable.status_code == 422 and unreadable.headers["X-Model-Version"] == "1"
    assert unreadable_inv.status_code == 400
    assert second["requests"] == first["requests"] and second["events"] == first["events"]
    assert both.status_code == 422
    assert third["requests"] == first["requests"] and third["events"] == first["events"]
    assert first["events"][("1", "refused")] == 0  # production never gets refused events


def test_production_refusing_a_body_is_not_counted(trained, records):
    model = make_model(trained, "7")
    with TestClient(create_app(ModelHolder(model=model), ROOMY)) as client:
        client.post("/predict", json={"records": [{**records[0], "tenure": "twelve"}]})
        client.post("/invocations", json={"dataframe_records": [{**records[0], "tenure": "twelve"}]})
        counted = decisions(client)
    assert counted["requests"]["7"] == 0 and counted["events"][("7", "refused")] == 0


# --- shadow ---------------------------------------------------------------------------------------------


def test_the_shadow_tally_counts_one_record_of_each_copy(trained, records):
    canary = make_model(trained, "2")
    tally = Tally(canary)
    body = orjson.dumps({"records": records[:4]})
    ours = canary.predict_columns(canary.request_columns(body))
    flipped = ["No" if label == "Yes" else "Yes" for label in ours.labels]
    far = [p + 0.5 if p < 0.5 else p - 0.5 for p in ours.probabilities]
    tally.score([
        copy_of(body, ours.labels, ours.probabilities),  # production answered as the canary does
        copy_of(body, flipped, far),  # every record disagrees and moved
        copy_of(b'{"records": []}', [], []),  # the canary refuses it
    ])  # fmt: skip
    taken = tally.take()
    assert taken["decision"] == {"counted": 3, "disagreed": 1, "moved": 1, "refused": 1}
    assert tally.take()["decision"] == {"counted": 0, "disagreed": 0, "moved": 0, "refused": 0}


def test_shadow_copies_only_counted_requests_and_reports_decisions(trained, records):
    from .test_canary import SHADOW_ALL, _scorer, shadow_metrics

    holder = rollout(trained, SHADOW_ALL.traffic)
    settings = Settings(decision_client_budget=5)
    with TestClient(create_app(holder, settings)) as client:
        client.get("/health")
        _scorer(client)
        _decisions_of(client).budget.clock = lambda: 1.0
        for _ in range(12):
            assert client.post("/predict", json={"records": records[:3]}).status_code == 200
        text = shadow_metrics(client, until=5)
    assert sample(text, "api_shadow_requests_total", version="2", outcome="scored") == 5  # 5 counted, 5 copies
    assert sample(text, "api_shadow_decision_total", version="2", event="counted") == 5
    assert sample(text, "api_shadow_decision_total", version="2", event="disagreed") == 0  # the same model
    assert sample(text, "api_shadow_decision_total", version="2", event="moved") == 0
    assert sample(text, "api_shadow_decision_total", version="2", event="refused") == 0


# --- /model --------------------------------------------------------------------------------------------


def test_model_shows_the_canary_only_to_the_operator_and_never_the_salt(trained):
    holder = rollout(trained, Traffic("canary", "2", 30, salt=SALT))
    with TestClient(create_app(holder, ROOMY)) as client:
        anonymous = client.get("/model")
        wrong = client.get("/model", headers={"Authorization": "Bearer not-the-token"})
        basic = client.get("/model", headers={"Authorization": f"Basic {TOKEN}"})
        operator = client.get("/model", headers={"Authorization": f"Bearer {TOKEN}"})
    for answer in (anonymous, wrong, basic):
        info = answer.json()
        assert info["version"] == "1" and answer.headers["X-Model-Version"] == "1"
        assert not {"canary", "traffic", "refused_canary", "refused_traffic"} & set(info)
        assert '"2"' not in answer.text.replace('"version":"1"', "")  # nothing of version 2
    info = operator.json()
    assert info["canary"]["version"] == "2"
    assert info["traffic"] == {"mode": "canary", "weight": 30, "shadow_share": 0.0, "rollout": None, "started": None,
                               "expires": None}  # fmt: skip
    assert "refused_canary" in info
    assert all(SALT not in a.text for a in (anonymous, wrong, basic, operator))


def test_without_a_token_configured_nobody_sees_the_canary(trained):
    holder = rollout(trained, Traffic("canary", "2", 30, salt=SALT))
    with TestClient(create_app(holder, Settings())) as client:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            info = client.get("/model", headers=headers).json()
            assert info["version"] == "1" and "canary" not in info and "traffic" not in info


def _decisions_of(client):
    """The running app's Decisions (held by /predict's handler)."""
    return client.app.predict.decisions


def test_metrics_of_a_new_version_exist_at_zero(trained):
    holder = rollout(trained, Traffic("canary", "2", 30, salt=SALT))
    with TestClient(create_app(holder, ROOMY)) as client:
        text = client.get("/metrics").text
    for version in ("1", "2"):
        assert sample(text, "api_decision_requests_total", version=version) == 0
        assert sample(text, "api_decision_latency_seconds_count", version=version) == 0
        for event in ("error", "refused", "positive"):
            assert sample(text, "api_decision_events_total", version=version, event=event) == 0
        for event in ("counted", "disagreed", "moved", "refused"):
            assert sample(text, "api_shadow_decision_total", version=version, event=event) == 0
    assert sample(text, "api_decision_uncounted_total", reason="client_budget") == 0
    assert sample(text, "api_decision_uncounted_total", reason="client_table_full") == 0
