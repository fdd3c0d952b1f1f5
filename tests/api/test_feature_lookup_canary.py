"""A canary's feature lookup meeting a store down or slow: the store's trouble, never the canary's error.

Both versions are trained from the feature service and read by customer id. Production reads first; the
canary reads again after its own decode. When the store fails in between (a timeout under load, a connection
dropped, anything a client with large batches can provoke), the canary's StoreUnavailable must be answered
503 with its reason on both doors, as production's is, and must not reach the release decisions: a counted
`error` there would let store trouble abort a healthy canary.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from fastapi.testclient import TestClient

from api import app as app_module
from api.app import create_app
from api.holder import ModelHolder
from api.model.online_store import Lookup, Rows, View, open_store
from api.release.traffic import Target, Traffic
from api.settings import Settings

from ..unit.test_online_store import FEAST_PYTHON, REDIS_SERVER, build_feast_store, free_port
from .test_canary import RolloutSource
from .test_feature_lookup import TIMEOUT_MS, known, service_model

pytestmark = pytest.mark.skipif(
    not FEAST_PYTHON.exists() or not REDIS_SERVER.exists(), reason="needs build/feast-venv and redis-server"
)
PASSWORD = "hunter2"
CANARY_ALL = Traffic("canary", "2", 100, salt="3f" * 16)  # every customer on the canary's side


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    built = build_feast_store(tmp_path_factory.mktemp("feast-canary"), customers=800, seed=3)  # conftest's data
    yield built
    built.redis.stop()


class DropsBetweenSides:
    """The real store for every odd read (production's), a store gone away for every even one (the canary's).

    With every request on the canary's side each request reads twice, production first: production's read
    succeeds and the canary's fails as a real Redis client does against a closed port.
    """

    def __init__(self, url: str, gone_url: str, timeout_s: float) -> None:
        self.real, self.gone = open_store(url, timeout_s), open_store(gone_url, timeout_s)
        self.description = self.real.description
        self.reads = 0

    def read(self, project: str, join_key: str, views: list[View], ids: list[str]) -> Rows:
        self.reads += 1
        return (self.real if self.reads % 2 else self.gone).read(project, join_key, views, ids)

    def ping(self) -> None:
        self.real.ping()

    def close(self) -> None:
        self.real.close()
        self.gone.close()


def rollout_client(trained, settings: Settings, traffic: Traffic) -> TestClient:
    models = {v: service_model(trained, version=v) for v in ("1", "2")}
    holder = ModelHolder(source=RolloutSource(models, Target("1", "2", traffic)))
    asyncio.run(holder.refresh())
    return TestClient(create_app(holder, settings))


def counter(text: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when the series is absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def decisions(client: TestClient) -> dict[str, float]:
    """Every release-decision count of both versions, as /metrics shows them (it flushes them first)."""
    text = client.get("/metrics").text
    counts = {}
    for version in ("1", "2"):
        counts[f"requests {version}"] = counter(text, "api_decision_requests_total", version=version)
        for event in ("error", "refused", "positive"):
            counts[f"{event} {version}"] = counter(text, "api_decision_events_total", event=event, version=version)
    return counts


def by_id(door: str, customer: str) -> dict[str, object]:
    key = "records" if door == "/predict" else "dataframe_records"
    return {key: [{"customerID": customer}]}


def assert_unavailable(answer, reason: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["reason"] == reason
    assert PASSWORD not in answer.text


def test_the_canarys_store_failure_is_a_503_and_never_its_error(store, trained, monkeypatch):
    ids, _ = known(store, trained, 6)
    gone = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(Lookup, "RETRY_S", 0.0)  # each read asks the store: the reads alternate as planned
    flaky: list[DropsBetweenSides] = []

    def opened(url: str, timeout_s: float) -> DropsBetweenSides:
        flaky.append(DropsBetweenSides(url, gone, timeout_s))
        return flaky[-1]

    monkeypatch.setattr(app_module, "open_store", opened)
    settings = Settings(
        feature_store_url=store.redis.url, feature_lookup_timeout_ms=TIMEOUT_MS, decision_client_budget=1_000_000
    )
    with rollout_client(trained, settings, CANARY_ALL) as client:
        client.get("/health")
        before = decisions(client)
        for door in ("/predict", "/invocations"):
            for customer in ids:
                answer = client.post(door, json=by_id(door, customer))
                # then: production read its features, the canary's read met the store gone: 503 with the reason
                assert_unavailable(answer, "unreachable")
            after = decisions(client)
            # and: nothing counted for either version, least of all an error against the canary
            assert after == before, (door, after)
        assert flaky[0].reads == 2 * 2 * len(ids)  # both sides read for every request: the canary's read failed
        text = client.get("/metrics").text
        assert counter(text, "api_feature_store_unavailable_total", reason="unreachable") == 2 * len(ids)


@pytest.mark.parametrize("weight", [50, 100])
def test_with_the_store_unreachable_a_rollout_answers_503_and_counts_nothing(store, trained, weight):
    ids, records = known(store, trained, 10)
    settings = Settings(
        feature_store_url=f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
        feature_lookup_timeout_ms=TIMEOUT_MS,
        decision_client_budget=1_000_000,
    )
    with rollout_client(trained, settings, Traffic("canary", "2", weight, salt="3f" * 16)) as client:
        client.get("/health")
        before = decisions(client)
        for customer in ids:
            for door in ("/predict", "/invocations"):
                assert_unavailable(client.post(door, json=by_id(door, customer)), "unreachable")
        assert decisions(client) == before
        # full records need no store: still served, and counted as answers
        answer = client.post("/predict", json={"records": records[:1]})
        assert answer.status_code == 200, answer.text
        after = decisions(client)
        assert after["error 1"] == after["error 2"] == 0
        assert after["requests 1"] + after["requests 2"] == 1
