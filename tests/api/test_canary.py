"""Two versions at once: a canary split that keeps a customer on one side, and a shadow that never slows production."""

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.release.traffic import Target, Traffic
from api.release.traffic_reading import TrafficReader
from api.settings import Settings
from api.shadow import FRAME, ScorerProcess, _take
from families import FAMILIES
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.core.train import train

from ..families import FAMILY_NAMES, quick_params
from ..unit.test_canary_binding import bound
from .conftest import make_model

SHADOW_ALL = Target("1", "2", Traffic("shadow", "2", shadow_share=1.0))  # production 1; 2 scores a copy of each request
TOKEN = "operator-token"  # MODEL_INFO_TOKEN: shows the canary on /model
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
# Every request of the test client counted (it is one client): the shadow copies only counted requests.
ROOMY = Settings(model_info_token=TOKEN, decision_client_budget=1_000_000)


class RolloutSource:
    """Stands in for the registry during a rollout: production, a canary and the traffic between them."""

    def __init__(self, models: dict, target: Target):
        self.models, self.current = models, target

    def target_version(self) -> str:
        return self.current.production

    def target(self) -> Target:
        return self.current

    def load(self, version: str):
        model = self.models[version]
        if isinstance(model, Exception):
            raise model
        return model


def serving(trained, target: Target, **extra) -> tuple[ModelHolder, RolloutSource]:
    models = {"1": make_model(trained, "1"), "2": make_model(trained, "2"), **extra}
    for model in models.values():
        if not isinstance(model, Exception):
            model.entity_field = "customerID"
            model.__post_init__()  # rebuilt with the customer field accepted
    source = RolloutSource(models, target)
    holder = ModelHolder(source=source)
    asyncio.run(holder.refresh())
    return holder, source


def test_a_canary_split_keeps_each_customer_on_one_version(trained, records):
    holder, _ = serving(trained, Target("1", "2", Traffic("canary", "2", weight=30, salt="5a" * 16)))
    with TestClient(create_app(holder, ROOMY)) as client:
        answers = {}
        for i in range(200):
            body = {"records": [{**records[i % len(records)], "customerID": f"c-{i % 50}"}]}
            version = client.post("/predict", json=body).headers["X-Model-Version"]
            answers.setdefault(f"c-{i % 50}", set()).add(version)
        info = client.get("/model", headers=OPERATOR).json()
    assert all(len(versions) == 1 for versions in answers.values())  # one customer, one version
    on_canary = sum(versions == {"2"} for versions in answers.values())
    assert 5 <= on_canary <= 25  # about 30 % of 50 customers
    assert info["version"] == "1" and info["canary"]["version"] == "2"
    assert {k: info["traffic"][k] for k in ("mode", "weight", "shadow_share")} == {
        "mode": "canary",
        "weight": 30,
        "shadow_share": 0.0,
    }
    assert "salt" not in info["traffic"] and "5a" * 16 not in str(info)  # the split's key is never shown
    assert info["refused_traffic"] is None  # a stand-in source: no registry state was read


def test_as_the_weight_grows_a_customer_moves_to_the_canary_once_and_stays(trained, records):
    salt = "c3" * 16
    holder, source = serving(trained, Target("1", "2", Traffic("canary", "2", weight=10, salt=salt)))
    with TestClient(create_app(holder, ROOMY)) as client:

        def side(customer: str) -> str:
            answer = client.post("/predict", json={"records": [{**records[0], "customerID": customer}]})
            return answer.headers["X-Model-Version"]

        at_10 = {c: side(c) for c in (f"c{i}" for i in range(100))}
        source.current = Target("1", "2", Traffic("canary", "2", weight=50, salt=salt))
        asyncio.run(holder.refresh())
        at_50 = {c: side(c) for c in at_10}
    assert all(at_50[c] == "2" for c, version in at_10.items() if version == "2")  # who moved, stays
    assert sum(v == "2" for v in at_10.values()) < sum(v == "2" for v in at_50.values())


def shadow_metrics(client, version: str = "2", until: int | None = None, timeout_s: float = 20.0) -> str:
    """/metrics, once the shadow scorer has reported `until` copies scored (its tallies come every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = client.get("/metrics").text
        done = re.search(rf'api_shadow_requests_total\{{outcome="scored",version="{version}"\}} (\S+)', text)
        if until is None or (done and float(done.group(1)) >= until) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_shadow_scores_a_copy_off_the_request_path_and_counts_agreement(trained, records):
    holder, _ = serving(trained, SHADOW_ALL)
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        _scorer(client)  # started off the request path, within a second
        for _ in range(20):
            answer = client.post("/predict", json={"records": records[:5]})
            assert answer.headers["X-Model-Version"] == "1"  # production answers
        text = shadow_metrics(client, until=20)
    agreed = float(re.search(r'api_shadow_agreement_total\{agree="true",version="2"\} (\S+)', text).group(1))
    assert agreed == 100  # the same model under another version number agrees with itself
    assert re.search(r'api_shadow_requests_total\{outcome="scored",version="2"\} 20.0', text)
    assert re.search(r'api_shadow_score_delta_bucket\{le="0.01",version="2"\} 100.0', text)
    # production's scores on the shadowed records, beside the shadow version's: a rollout compares the two
    production = re.findall(r'api_shadow_production_score_bucket\{le="([^"]+)",version="2"\} (\S+)', text)
    shadow = re.findall(r'api_score_bucket\{le="([^"]+)",version="2"\} (\S+)', text)
    assert production and production == shadow and production[-1] == ("+Inf", "100.0")
    # the shadow version's live counts came back from the scorer: each record's features, binned
    assert re.search(r'api_predictions_total\{version="2"\} 100.0', text)


def test_the_shadow_scorer_is_a_separate_low_priority_process_holding_only_its_socket(trained, records):
    holder, _ = serving(trained, SHADOW_ALL)
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        pid = _scorer(client).pid
        deadline = time.monotonic() + 10  # the child detaches itself just after the fork: the policy is set last
        while os.sched_getscheduler(pid) != os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.01)
        policy = os.sched_getscheduler(pid)
        descriptors = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in descriptors if fd > 2]
    assert pid != os.getpid() and nice == 19
    assert policy == os.SCHED_IDLE  # any runnable task of production's preempts it at once, not after a slice
    assert len(links) == 1 and links[0].startswith("socket:")  # not the worker's listening socket nor its clients
    _gone(pid)  # the app stopped: so did its scorer


def test_a_scorer_that_dies_costs_production_nothing_and_comes_back(trained, records, monkeypatch):
    monkeypatch.setattr("api.shadow.RESTART_S", 3.0)  # longer than 20 requests take on a busy machine
    holder, _ = serving(trained, SHADOW_ALL)
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        first = _scorer(client).pid
        os.kill(first, signal.SIGKILL)
        _gone(first)
        answers = [client.post("/predict", json={"records": records[:1]}) for _ in range(20)]
        second = _scorer(client).pid  # forked again by the flush loop
        for _ in range(20):
            client.post("/predict", json={"records": records[:1]})
        text = shadow_metrics(client, until=20)
    assert all(a.status_code == 200 and a.headers["X-Model-Version"] == "1" for a in answers)
    assert second != first
    assert re.search(r'api_shadow_requests_total\{outcome="failed",version="2"\} 20.0', text)  # while it was dead
    assert re.search(r'api_shadow_requests_total\{outcome="scored",version="2"\} 20.0', text)


def test_a_stopped_scorer_hands_over_its_last_tallies_and_a_stuck_one_is_killed(trained, records, monkeypatch):
    monkeypatch.setattr("api.shadow.STOP_GRACE_S", 3.0)  # room for 15 copies and the hand-over on a busy machine
    holder, source = serving(trained, SHADOW_ALL)
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        pid = _scorer(client).pid
        for _ in range(15):
            client.post("/predict", json={"records": records[:2]})
        source.current = Target("1", "2", Traffic("canary", "2", weight=10))  # the rollout leaves shadow at once
        asyncio.run(holder.refresh())
        _gone(pid)
        text = shadow_metrics(client, until=15)
        # a scorer that cannot end (stopped) is killed once its grace is over
        source.current = SHADOW_ALL
        asyncio.run(holder.refresh())
        stuck = _scorer(client).pid
        os.kill(stuck, signal.SIGSTOP)
        source.current = Target("1", "2", Traffic("canary", "2", weight=10))
        asyncio.run(holder.refresh())
        _gone(stuck)
    assert re.search(r'api_shadow_requests_total\{outcome="scored",version="2"\} 15.0', text)  # none lost
    assert re.search(r'api_shadow_agreement_total\{agree="true",version="2"\} 30.0', text)


def test_a_worker_that_is_pid_1_still_gets_its_scorer(trained, monkeypatch):
    """In a container without an init, the worker is pid 1: its child's parent is 1, and that is no orphan."""
    model = make_model(trained, "2")
    monkeypatch.setattr(os, "getpid", lambda: 1)  # the worker as the child sees it, and as it sees itself
    monkeypatch.setattr(os, "getppid", lambda: 1)
    scorer = ScorerProcess(model, 10, lambda *_: None)
    monkeypatch.undo()
    try:
        time.sleep(1.0)
        assert scorer.alive and os.path.exists(f"/proc/{scorer.pid}")
    finally:
        scorer.stop()
        _gone(scorer.pid)


def test_copies_past_the_queue_are_dropped_and_counted(trained, records):
    holder, _ = serving(trained, SHADOW_ALL)
    with TestClient(create_app(holder, Settings(shadow_queue=2, decision_client_budget=1_000_000))) as client:
        client.get("/health")
        scorer = _scorer(client)
        os.kill(scorer.pid, signal.SIGSTOP)  # a scorer with no CPU to spare: nothing is acknowledged
        try:
            answers = [client.post("/predict", json={"records": records[:1]}) for _ in range(10)]
            text = client.get("/metrics").text
        finally:
            os.kill(scorer.pid, signal.SIGCONT)
    assert all(a.status_code == 200 for a in answers)
    dropped = re.search(r'api_shadow_requests_total\{outcome="dropped",version="2"\} (\S+)', text)
    assert dropped and float(dropped.group(1)) >= 8  # 2 in flight at most


def test_the_scorer_stops_when_the_rollout_leaves_shadow(trained, records):
    holder, source = serving(trained, SHADOW_ALL)
    with TestClient(create_app(holder, ROOMY)) as client:
        client.get("/health")
        pid = _scorer(client).pid
        source.current = Target("1", "2", Traffic("canary", "2", weight=10))
        asyncio.run(holder.refresh())
        _gone(pid, timeout_s=10)  # the flush loop, every second, lets it go


def _scorer(client, timeout_s: float = 10.0):
    """The running app's shadow scorer, once the flush loop (every second) has started it."""
    stack = client.app.predict  # /predict's handler holds the Shadow
    deadline = time.monotonic() + timeout_s
    while (stack.shadow.scorer is None or not stack.shadow.scorer.alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.shadow.scorer is not None and stack.shadow.scorer.alive
    return stack.shadow.scorer


def _gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), f"process {pid} still there"


def test_a_refused_canary_leaves_production_answering_everything(trained, records):
    from api.release.check import RefusedVersion

    crafted = RefusedVersion("2", "classifier.estimators_[3]: node 65's left child is outside the tree")
    holder, _ = serving(trained, Target("1", "2", Traffic("canary", "2", weight=100)), **{"2": crafted})
    with TestClient(create_app(holder, ROOMY)) as client:
        versions = {
            client.post("/predict", json={"records": records[:1]}).headers["X-Model-Version"] for _ in range(20)
        }
        info = client.get("/model", headers=OPERATOR).json()
    assert versions == {"1"} and info["canary"] is None and info["traffic"]["mode"] == "off"
    assert "outside the tree" in info["refused_canary"]["reason"]


def test_the_scorer_takes_whole_frames_only_and_bounds_a_batch_by_bytes():
    buffer = bytearray()
    for size in (10, 700_000, 700_000, 10):
        buffer += FRAME.pack(size) + b"x" * size
    buffer += FRAME.pack(5) + b"abc"  # a frame still arriving
    first = _take(buffer, 256, most_bytes=1 << 20)
    second = _take(buffer, 256, most_bytes=1 << 20)
    assert [len(c) for c in first] == [10, 700_000, 700_000]  # past a megabyte, the batch ends
    assert [len(c) for c in second] == [10] and _take(buffer, 256) == []
    buffer += b"de"
    assert _take(buffer, 256) == [b"abcde"] and not buffer


class TaggedSource(RolloutSource):
    """Production 1 and @canary at 2, the canary state read from registered-model tags as a replica reads them."""

    def __init__(self, models: dict, tags: dict, verify_key=None):
        super().__init__(models, Target("1"))
        self.tags, self.traffic_reader = tags, TrafficReader("churn", "canary", verify_key)

    def target(self) -> Target:
        traffic = self.traffic_reader.read(self.tags, "2")
        return Target("1", "2" if traffic.mode != "off" else None, traffic)


def test_unsigned_a_hand_written_weight_of_100_answers_no_customer_and_model_says_why(trained, records):
    # given: no verify key, and a canary state of weight 100 written by someone with registry write access
    tags, _ = bound(weight=100, key=None)
    models = {"1": make_model(trained, "1"), "2": make_model(trained, "2")}
    holder = ModelHolder(source=TaggedSource(models, tags))
    asyncio.run(holder.refresh())
    asyncio.run(holder.refresh())  # a second poll: the same refusal is counted once
    with TestClient(create_app(holder, ROOMY)) as client:
        versions = {client.post("/predict", json={"records": records[:1]}).headers["X-Model-Version"]
                    for _ in range(30)}  # fmt: skip
        public = client.get("/model").json()
        info = client.get("/model", headers=OPERATOR).json()
    # then: production answered everyone; /model says plainly who steers traffic, and the operator sees why
    assert versions == {"1"} and info["canary"] is None and info["traffic"]["mode"] == "off"
    assert public["canary_states"].startswith("UNSIGNED") and "refused_traffic" not in public
    refused = info["refused_traffic"]
    assert refused["refused"]["kind"] == "unsigned_canary" and refused["refusals"] == {"unsigned_canary": 1}
    assert "RELEASE_VERIFY_KEY" in refused["refused"]["reason"]


@pytest.mark.parametrize("family", [name for name in FAMILY_NAMES if FAMILIES[name].requirements])
def test_a_booster_canary_and_shadow_answer_as_the_booster_itself(trained, records, family):
    """A family with its own library as the candidate: the canary's answers are the booster's; its shadow scores."""
    booster = train(prepare(generate_churn(800, 3).astype(str), DataParams()), quick_params(family), 0.25, 3)
    candidate = make_model(booster, "2")
    X = trained.split.X_test.head(20)
    expected = booster.model.predict_proba(X)[:, list(booster.model.classes_).index("Yes")]
    for target in (Target("1", "2", Traffic("canary", "2", weight=100, salt="7e" * 16)), SHADOW_ALL):
        holder, _ = serving(trained, target, **{"2": candidate})
        with TestClient(create_app(holder, ROOMY)) as client:
            client.get("/health")
            if target.traffic.mode == "shadow":
                _scorer(client)
            body = {"records": [{**r, "customerID": f"c-{i}"} for i, r in enumerate(records)]}
            answer = client.post("/predict", json=body)
            assert answer.status_code == 200, answer.text
            if target.traffic.mode == "canary":
                assert answer.headers["X-Model-Version"] == "2"
                assert answer.json()["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
            else:
                assert answer.headers["X-Model-Version"] == "1"
                text = shadow_metrics(client, until=1)
                assert re.search(r'api_shadow_requests_total\{outcome="scored",version="2"\} 1.0', text)
