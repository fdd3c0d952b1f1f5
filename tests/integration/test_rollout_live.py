"""Progressive delivery against real processes: a tracking server, two API replicas, live traffic, the real commands.

One module-wide fleet: an `mlflow server`, production deployed on it, two
replicas following production and the canary alias, and a traffic generator
sending one-record requests for a few hundred customers. Each test registers
its own candidate and rolls it out (phases shortened to seconds by --set).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import skops.io
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.safe_model import ALLOWED_TYPES, artifact_digest
from api.release.traffic import Rollout, Traffic
from pipeline.cli import main
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.runtime.api_process import uvicorn_process
from pipeline.runtime.tracking_server import tracking_server
from pipeline.store import alias_moves
from pipeline.store.release_lock import release_lock

from ..conftest import ROOT
from ..crafted import child_out_of_range
from .test_api_live import wait_ready

pytestmark = pytest.mark.integration
MODEL = "churn-classifier"
# Phases of seconds instead of minutes: a larger α and larger effects, so each rule's plan is tens or hundreds of
# requests instead of thousands (the simulation in tests/unit/test_release_rules.py holds the defaults).
FAST = [
    "rollout.alpha=0.05", "rollout.phase_timeout_s=90", "rollout.poll_s=0.5",
    "rollout.shadow={sample_share: 0.5, min_duration_s: 2, disagreement: {tolerated: 0.01, effect: 0.09},"
    " moved: {tolerated: 0.02, effect: 0.18}, refused: {tolerated: 0.01, effect: 0.19}}",
    "rollout.steps=[{weight: 20, min_duration_s: 2}, {weight: 50, min_duration_s: 2}]",
    "rollout.step_rules={errors: {effect_ratio: 10, min_rate: 0.2}, slow: {slow_ms: 10, effect_ratio: 10,"
    " min_rate: 0.5}, positives: {tolerated_ratio: 1.5, effect_ratio: 4, min_rate: 0.25},"
    " refused: {tolerated: 0.01, effect: 0.19}}",
    "rollout.bake={duration_s: 12, poll_s: 1, errors: {tolerated: 0.01, effect: 0.19},"
    " slow: {slow_ms: 10, tolerated: 0.01, effect: 0.19}}",
]  # fmt: skip
INFO_TOKEN = "rollout-live-info-token"  # MODEL_INFO_TOKEN of the replicas: /model shows the canary with it
ADMIN = {"Authorization": f"Bearer {INFO_TOKEN}"}


def run(*args: str, sets: list[str] = FAST) -> tuple[int, str]:
    """`python -m pipeline ARGS` in this process; (exit code, stdout)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, *(a for s in sets for a in ("--set", s))])
    return code, out.getvalue().strip()


def candidate(*overrides: str) -> str:
    """train -> gate -> register -> smoke: a version ready to roll out; returns it."""
    code, run_id = run("train", sets=list(overrides))
    assert code == 0
    assert run("gate", "--run-id", run_id, sets=list(overrides))[0] == 0
    code, version = run("register", "--run-id", run_id)
    assert code == 0 and run("smoke", "--version", version)[0] == 0
    return version


def client_address(i: int) -> str:
    """Customer i's address, as the proxy in front of the replicas would say it (X-Forwarded-For)."""
    return f"10.1.{i // 250}.{i % 250 + 1}"


class Load(threading.Thread):
    """One-record requests for many customers, to both replicas in turn, until stopped; answers kept by version.

    Each customer calls from an address of its own (X-Forwarded-For, which the replicas trust from loopback).
    """

    def __init__(self, urls: list[str], records: list[dict], bad_share: float = 0.0):
        super().__init__(daemon=True)
        self.urls, self.records, self.bad_share = urls, records, bad_share
        self.versions: dict[str, int] = {}
        self.statuses: dict[int, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=10) for url in self.urls]
        i = 0
        while not self.halt.is_set():
            record = dict(self.records[i % len(self.records)])
            if self.bad_share and (i % 100) < self.bad_share * 100:
                record["tenure"] = "not a number"  # a client this version breaks: a 4xx
            customer = i % len(self.records)
            try:
                answer = clients[i % len(clients)].post(
                    "/predict", json={"records": [record]}, headers={"X-Forwarded-For": client_address(customer)}
                )
                self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
                version = answer.headers.get("X-Model-Version", "")
                self.versions[version] = self.versions.get(version, 0) + 1
            except httpx.HTTPError:
                self.statuses[0] = self.statuses.get(0, 0) + 1
            i += 1
            time.sleep(0.005)


ATTACKER = "203.0.113.66"  # one client's address (X-Forwarded-For), whatever it sends


class Attacker(threading.Thread):
    """One client, one address: malformed bodies, a huge drifted batch, trickled bodies, a flood, canary batches."""

    def __init__(self, url: str, records: list[dict], *, malformed: bool = False, drifted_batch: bool = False,
                 trickle: bool = False, flood: bool = False, canary_batch: str | None = None) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.url, self.records = url, records
        self.malformed, self.drifted_batch, self.trickle = malformed, drifted_batch, trickle
        self.flood, self.canary_batch = flood, canary_batch
        self.sent = {"malformed": 0, "drifted": 0, "trickled": 0, "flood": 0, "canary batches": 0}
        self.halt = threading.Event()

    def run(self) -> None:
        headers = {"X-Forwarded-For": ATTACKER, "Content-Type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=60, headers=headers) as client:
            easy = self._easiest(client) if self.flood else []
            found: list[dict] = []
            while not self.halt.is_set():
                if self.malformed:
                    client.post("/predict", content=b'{"records": [{"tenure": ')
                    self.sent["malformed"] += 1
                if self.drifted_batch and not self.sent["drifted"]:
                    batch = [{**self.records[i % len(self.records)], "Contract": "Lifetime"} for i in range(10_000)]
                    client.post("/predict", json={"records": batch})
                    self.sent["drifted"] += 1
                if self.trickle:
                    self._trickled(client)
                for _ in range(200 if self.flood else 0):
                    client.post("/predict", json={"records": [easy[self.sent["flood"] % len(easy)]]})
                    self.sent["flood"] += 1
                if self.canary_batch is not None:
                    found += self._canary_customers(client)
                    if found:
                        batch = [found[i % len(found)] for i in range(10_000)]
                        answer = client.post("/predict", json={"records": batch})
                        if answer.headers.get("X-Model-Version") == self.canary_batch:
                            self.sent["canary batches"] += 1
                time.sleep(0.2)

    def _trickled(self, client: httpx.Client) -> None:
        body = json.dumps({"records": [self.records[0]]}).encode()

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 64):
                time.sleep(0.6 * 64 / len(body))
                yield body[i : i + 64]

        client.post("/predict", content=chunks())
        self.sent["trickled"] += 1

    def _easiest(self, client: httpx.Client) -> list[dict]:
        """The 20 records production gives the lowest probability: both versions agree on them."""
        answer = client.post("/predict", json={"records": self.records}).json()
        ranked = sorted(zip(answer["probabilities"], range(len(self.records)), strict=True))
        return [self.records[i] for _, i in ranked[:20]]

    def _canary_customers(self, client: httpx.Client) -> list[dict]:
        """Records under new customer ids that the canary answered, found by asking one at a time."""
        out = []
        for n in range(30):
            record = {**self.records[n % len(self.records)], "customerID": f"ATTACK-{self.sent['canary batches']}-{n}"}
            answer = client.post("/predict", json={"records": [record]})
            if answer.headers.get("X-Model-Version") == self.canary_batch:
                out.append(record)
        return out


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[dict]:
    """A tracking server with production deployed, two replicas following it, and a project directory to run in."""
    home = tmp_path_factory.mktemp("rollout")
    shutil.copy(ROOT / "params.yaml", home / "params.yaml")
    (home / "data").mkdir()
    generate_churn(3000, 42).to_csv(home / "data" / "churn.csv", index=False)
    keys = home / "keys"
    with pytest.MonkeyPatch.context() as mp, tracking_server(home / "server") as url:
        mp.chdir(home)
        mp.setenv("MLFLOW_TRACKING_URI", url)
        for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_SHA", "GITHUB_ACTOR", "PROMETHEUS_URL"):
            mp.delenv(name, raising=False)
        assert run("keygen", "--out", str(keys), sets=[])[0] == 0
        mp.setenv("RELEASE_SIGNING_KEY", str(keys / "release.key"))
        assert run("run", sets=["data.rows=3000"])[0] == 0  # production 1, signed
        assert run("run", sets=["data.rows=3000"])[0] == 0  # production 2: a version to go back to, whatever ran
        env = {"MODEL_NAME": MODEL, "RELOAD_INTERVAL_S": "0.5", "ENTITY_ID_FIELD": "customerID",
               "RELEASE_VERIFY_KEY": str(keys / "release.pub"), "MODEL_INFO_TOKEN": INFO_TOKEN}  # fmt: skip
        with uvicorn_process(env) as one, uvicorn_process(env) as two:
            wait_ready(one)
            wait_ready(two)
            frame = generate_churn(400, 7)
            typed = prepare(frame.astype(str), DataParams()).features  # numbers as numbers, as clients send them
            typed["customerID"] = frame["customerID"].to_numpy()  # the customer a canary split keys on
            records = json.loads(typed.to_json(orient="records"))
            yield {"urls": [one, two], "records": records, "home": home, "client": MlflowClient(url)}


@pytest.fixture
def load(fleet) -> Iterator[Load]:
    traffic = Load(fleet["urls"], fleet["records"])
    traffic.start()
    yield traffic
    traffic.halt.set()
    traffic.join(10)


def production(fleet) -> str:
    return alias_moves.alias_version(fleet["client"], MODEL, "production")


def report() -> dict:
    return json.loads(Path("reports/rollout.json").read_text())


def api_args(fleet) -> list[str]:
    return [a for url in fleet["urls"] for a in ("--api-url", url)]


def begin(client: MlflowClient, version: str, weight: int, expires_in: float = 600) -> Rollout:
    """A rollout of `version` started in the ledger and its signed canary state at `weight`, as rollout writes them."""
    from pipeline.core.release_keys import signing_key

    key = signing_key()
    with release_lock(client, MODEL):
        rollout = alias_moves.start_rollout(client, MODEL, "canary", version, "rollout: by the test", key)
        expires = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(timespec="seconds")
        state = Traffic("canary", version, weight, salt=secrets.token_hex(16), rollout=rollout, expires=expires)
        alias_moves.set_traffic(client, MODEL, state, key)
    return rollout


def end(client: MlflowClient, version: str, rollout: Rollout | None) -> None:
    """The rollout's end, as rollout records it: the state off, @canary removed, an end entry naming it."""
    from pipeline.core.release_keys import signing_key

    with release_lock(client, MODEL):
        alias_moves.end_rollout(
            client, MODEL, "canary", version, rollout.id if rollout else None, "test over", signing_key()
        )


def replicas(fleet, until: Callable[[dict], bool], timeout_s: float = 60) -> list[dict]:
    """Every replica's /model (operator's view) once `until` holds for each."""
    deadline = time.monotonic() + timeout_s
    while True:
        infos = [httpx.get(url + "/model", headers=ADMIN).json() for url in fleet["urls"]]
        if all(until(info) for info in infos):
            return infos
        assert time.monotonic() < deadline, infos
        time.sleep(0.25)


def refused(kind: str) -> Callable[[dict], bool]:
    """A replica that reads the canary state as off, having refused it for `kind`."""
    return lambda info: (((info["refused_traffic"] or {}).get("refused")) or {}).get("kind") == kind


def released_not_serving(fleet) -> str:
    """A version the fleet released (1 or 2) that production does not serve now: a canary to aim at."""
    return "1" if production(fleet) != "1" else "2"


def test_a_good_candidate_goes_through_shadow_and_each_step_then_production(fleet, load):
    # given: a retrain of production, registered and smoke-tested
    version = candidate("data.rows=3000")
    before = production(fleet)
    # when: it is rolled out against live traffic
    code, _ = run("rollout", "--version", version, *api_args(fleet))
    # then: every phase passed, it was promoted, and the canary is gone
    state = report()
    shutil.copy("reports/rollout.md", "reports/rollout-promoted.md")  # kept for a reader of the test's folder
    assert code == 0, (state, [httpx.get(url + "/model", headers=ADMIN).json() for url in fleet["urls"]])
    assert [p["name"] for p in state["phases"]] == ["shadow", "canary 20 %", "canary 50 %"]
    assert all(p["passed"] for p in state["phases"]) and state["verdict"] == "passed"
    assert {r["rule"] for r in state["phases"][0]["rules"]} == {"disagreement", "moved", "refused"}
    assert {r["rule"] for r in state["phases"][1]["rules"]} == {"errors", "slow", "positives", "refused"}
    assert production(fleet) == version != before
    client = fleet["client"]
    assert "canary" not in client.get_registered_model(MODEL).aliases
    assert client.get_model_version(MODEL, version).tags[contract.ROLLOUT] == "passed"
    assert load.versions.get(version, 0) > 20 and set(load.statuses) == {200}  # it answered customers itself
    assert run("status", "--json", sets=[])[1] and json.loads(run("status", "--json", sets=[])[1])["anomalies"] == []


def test_the_replicas_agree_on_the_weight_within_a_poll(fleet):
    # given: a canary state written as rollout writes it (lock, ledger entry, signature, expiry)
    client, version = fleet["client"], production(fleet)
    rollout = begin(client, version, 30)
    try:
        # then: both replicas route with the same weight within two polls
        seen = replicas(fleet, lambda i: (i["traffic"]["mode"], i["traffic"]["weight"]) == ("canary", 30), 5)
        assert {i["traffic"]["rollout"] for i in seen} == {rollout.id}
        assert all(i["refused_traffic"]["refused"] is None for i in seen)
    finally:
        end(client, version, rollout)


def test_a_slow_candidate_is_aborted_at_the_step_that_catches_it_and_production_never_moves(fleet, load):
    # given: a forest of many deep trees: it passes gate and smoke, but answers far slower than production
    slow = ["model.type=random_forest", "model.random_forest.n_estimators=300", "model.random_forest.max_depth=null",
            "gates.metrics={f1: {min: 0.3}}", "data.rows=3000"]  # fmt: skip
    version = candidate(*slow)
    before = production(fleet)
    # when: rolled out with the shadow's comparisons off (only the canary steps judge it)
    # (the first step lasts long enough for a loaded machine to send it the few requests that decide)
    sets = [*FAST, "rollout.shadow.disagreement=null", "rollout.shadow.moved=null",
            "rollout.steps=[{weight: 20, min_duration_s: 8}, {weight: 50, min_duration_s: 2}]"]  # fmt: skip
    code, _ = run("rollout", "--version", version, *api_args(fleet), sets=sets)
    # then: a canary step fails its latency rule (and only that); production is where it was; the canary is gone
    state = report()
    shutil.copy("reports/rollout.md", "reports/rollout-aborted.md")
    assert code == 1 and state["verdict"] == "aborted"
    failed = [r for p in state["phases"] for r in p["rules"] if not r["passed"]]
    assert state["phases"][-1]["name"].startswith("canary") and {r["rule"] for r in failed} == {"slow"}
    assert production(fleet) == before
    assert "canary" not in fleet["client"].get_registered_model(MODEL).aliases
    assert fleet["client"].get_model_version(MODEL, version).tags[contract.ROLLOUT] == "aborted"
    moves = json.loads(run("status", "--json", sets=[])[1])
    assert moves["anomalies"] == [] and moves["history"][-1]["alias"] == "canary" and moves["history"][-1]["to"] == ""


def test_a_candidate_that_disagrees_with_production_is_aborted_in_shadow_before_any_customer_sees_it(fleet, load):
    # given: a retrain that ignores the class balance: it passes a floor-only gate and smoke, but calls far fewer
    # customers churners than production does on the same live requests
    disagreeing = ["model.logistic_regression.class_weight=null", "gates.metrics={f1: {min: 0.1}}", "data.rows=3000"]
    version = candidate(*disagreeing)
    before = production(fleet)
    # when: rolled out with the default shadow rules
    code, _ = run("rollout", "--version", version, *api_args(fleet))
    # then: the shadow phase fails on how the candidate answers the same requests (labels otherwise, or moves the
    # probability: whichever rule's evidence is in first stops it), no canary step ran, production never moved
    state = report()
    assert code == 1 and state["verdict"] == "aborted"
    assert [p["name"] for p in state["phases"]] == ["shadow"]
    failed = {r["rule"]: r for r in state["phases"][0]["rules"] if not r["passed"]}
    assert failed and set(failed) <= {"disagreement", "moved"}, failed
    assert all(r["value"] > 0.05 for r in failed.values()), failed
    assert production(fleet) == before
    assert "canary" not in fleet["client"].get_registered_model(MODEL).aliases
    assert not any(v == version for v in load.versions)  # shadow only: the candidate answered nobody


def test_a_candidate_that_cannot_load_is_refused_by_rollout_and_by_the_canary_replicas(fleet, load):
    # given: a forest that passed everything, then crafted on the store (digest tags rewritten to match)
    version = candidate("model.type=random_forest", "model.random_forest.n_estimators=20",
                        "gates.metrics={f1: {min: 0.3}}", "data.rows=3000")  # fmt: skip
    client = fleet["client"]
    mv = client.get_model_version(MODEL, version)
    model_id = client.get_run(mv.run_id).data.tags[contract.MODEL_ID]  # a server's version does not carry it
    location = client.get_logged_model(model_id).artifact_location  # mlflow-artifacts:/<path under the root>
    model_dir = fleet["home"] / "server" / "artifacts" / location.split(":", 1)[1].lstrip("/")
    pipeline = skops.io.loads((model_dir / "model.skops").read_bytes(), trusted=sorted(ALLOWED_TYPES))
    child_out_of_range(pipeline)
    (model_dir / "model.skops").write_bytes(skops.io.dumps(pipeline))
    schema = Path(client.download_artifacts(mv.run_id, contract.FEATURE_SCHEMA))
    for tag in (contract.ARTIFACT_DIGEST, contract.SMOKE_ARTIFACT_DIGEST):
        client.set_model_version_tag(MODEL, version, tag, artifact_digest(model_dir, schema))
    before = production(fleet)
    # then: rollout refuses it before anything moves
    code, _ = run("rollout", "--version", version, *api_args(fleet))
    assert code == 1 and production(fleet) == before
    assert "canary" not in client.get_registered_model(MODEL).aliases
    # and if the artifact is swapped under a rollout already running, every canary replica refuses it too
    rollout = begin(client, version, 50)
    try:
        deadline = time.monotonic() + 60
        while not all(
            (httpx.get(url + "/model", headers=ADMIN).json()["refused_canary"] or {}).get("version") == version
            for url in fleet["urls"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        infos = [httpx.get(url + "/model", headers=ADMIN).json() for url in fleet["urls"]]
    finally:
        end(client, version, rollout)
    assert all(i["version"] == before and i["canary"] is None and i["traffic"]["mode"] == "off" for i in infos)
    # signed verdicts cover the digest: the rewritten one refuses the canary before any load (where nothing is
    # signed, test_crafted_release shows these bytes refused by the structure check in the probe child)
    assert all("not signed by the release key" in i["refused_canary"]["reason"] for i in infos), infos
    assert load.statuses.get(500, 0) == 0 and version not in load.versions  # production answered everyone


def test_watch_leaves_production_alone_whatever_one_client_sends(fleet, load):
    # given: production baking under honest traffic, and one client sending malformed bodies (4xx), one huge
    # batch of a contract value training never saw (drift), and bodies trickled in over 0.6 s each (slowness)
    before = production(fleet)
    attack = Attacker(fleet["urls"][0], fleet["records"], malformed=True, drifted_batch=True, trickle=True)
    attack.start()
    try:
        code, _ = run("watch", *api_args(fleet))
    finally:
        attack.halt.set()
        attack.join(30)
    # then: the bake judged production on what it causes and passed it: nothing moved
    state = json.loads(Path("reports/watch.json").read_text())
    assert attack.sent["malformed"] > 5 and attack.sent["drifted"] >= 1 and attack.sent["trickled"] >= 4, attack.sent
    assert code == 0 and state["verdict"] == "passed", state
    assert production(fleet) == before
    figures = state["phases"][0]["figures"]
    assert figures["4xx per request (pages, never acts)"] > 0  # seen and shown, never acted on


def test_watch_rolls_back_a_production_that_is_slow_itself(fleet, load):
    # given: a forest of many deep trees that passed gate and smoke, promoted as it is
    slow = ["model.type=random_forest", "model.random_forest.n_estimators=300", "model.random_forest.max_depth=null",
            "gates.metrics={f1: {min: 0.3}}", "data.rows=3000"]  # fmt: skip
    version = candidate(*slow)
    assert run("promote", "--version", version, sets=[])[0] == 0
    # when: it bakes under honest traffic
    code, _ = run("watch", *api_args(fleet))
    # then: its own slowness (per record, from the complete body to the answer) rolls it back
    state = json.loads(Path("reports/watch.json").read_text())
    assert code == 1 and state["verdict"] == "rolled back" and state["reason"].startswith("slow:"), state
    assert production(fleet) != version
    last = json.loads(run("status", "--json", sets=[])[1])["history"][-1]
    assert last["kind"] == "rollback" and "watch: slow" in last["reason"]


def test_one_client_cannot_abort_an_identical_candidate(fleet, load):
    # given: a retrain of production (the same answers), and one client that finds customer ids the canary
    # answers and sends them as one 10,000-record batch, besides malformed and trickled bodies
    version = candidate("data.rows=3000")
    attack = Attacker(fleet["urls"][1], fleet["records"], malformed=True, trickle=True, canary_batch=version)
    attack.start()
    try:
        code, _ = run("rollout", "--version", version, *api_args(fleet))
    finally:
        attack.halt.set()
        attack.join(30)
    # then: the batches reached the canary, yet counted as the one request each is: promoted
    state = report()
    assert attack.sent["canary batches"] >= 1, attack.sent
    assert code == 0 and state["verdict"] == "passed", state
    assert production(fleet) == version


def test_one_client_flooding_easy_records_cannot_pass_a_disagreeing_candidate(fleet, load):
    # given: the class-balance-blind retrain of the shadow test, and one client flooding the records production is
    # surest of (both versions agree on them), as fast as it can, from one address
    disagreeing = ["model.logistic_regression.class_weight=null", "gates.metrics={f1: {min: 0.1}}", "data.rows=3000"]
    version = candidate(*disagreeing)
    before = production(fleet)
    attack = Attacker(fleet["urls"][0], fleet["records"], flood=True, trickle=True)
    attack.start()
    try:
        code, _ = run("rollout", "--version", version, *api_args(fleet))
    finally:
        attack.halt.set()
        attack.join(30)
    # then: the flood was answered but counted within its budget only; the shadow phase still aborts it
    state = report()
    assert attack.sent["flood"] > 200, attack.sent
    assert code == 1 and [p["name"] for p in state["phases"]] == ["shadow"], state
    # whichever comparison crosses first (labels, or probabilities moved on the same records): neither was diluted
    failed = {r["rule"] for r in state["phases"][0]["rules"] if not r["passed"]}
    assert failed and failed <= {"disagreement", "moved"}, state
    assert production(fleet) == before
    uncounted = sum(_metric(url, "api_decision_uncounted_total") for url in fleet["urls"])
    assert uncounted > 0  # the flood past its budget


def test_a_rollout_racing_a_rollback_keeps_the_ledger_one_chain(fleet, load):
    # given: a rollout under way (its own process, as a workflow runs it)
    version = candidate("data.rows=3000")
    before = production(fleet)
    args = [sys.executable, "-m", "pipeline", "rollout", "--version", version, *api_args(fleet)]
    rollout = subprocess.Popen(
        [*args, *(a for s in FAST for a in ("--set", s))], cwd=fleet["home"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "canary" not in fleet["client"].get_registered_model(MODEL).aliases:  # in its shadow phase
            assert rollout.poll() is None and time.monotonic() < deadline, rollout.communicate()
            time.sleep(0.2)
        # when: the on-call rolls production back meanwhile (to a version the fleet deployed, whatever ran before)
        to = "1" if before != "1" else "2"
        code, went_to = run("rollback", "--to", to, "--reason", "incident during a rollout", sets=[])
    finally:
        _, err = rollout.communicate(timeout=300)
    # then: the lock serialized them: the rollback moved production, and the rollout saw it had moved
    assert code == 0 and went_to != before
    assert rollout.returncode == 1 and "production moved" in err, err[-2000:]
    assert production(fleet) == went_to
    state = json.loads(run("status", "--json", sets=[])[1])
    assert state["anomalies"] == [] and "canary" not in state["aliases"]


def test_an_aborted_rollouts_state_copied_back_is_refused_by_every_replica(fleet, load, monkeypatch):
    # given: a rollout whose 50 % step is held long enough for an insider to copy its state, then aborted at that
    # step (SIGTERM: its end is recorded as for a failed rule)
    version, client = candidate("data.rows=3000"), fleet["client"]
    before = production(fleet)
    sets = [*FAST, "rollout.steps=[{weight: 20, min_duration_s: 2}, {weight: 50, min_duration_s: 300}]"]
    args = [sys.executable, "-m", "pipeline", "rollout", "--version", version, *api_args(fleet)]
    rollout = subprocess.Popen(
        [*args, *(a for s in sets for a in ("--set", s))], cwd=fleet["home"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while client.get_registered_model(MODEL).tags.get(contract.CANARY_WEIGHT) != "50":
            assert rollout.poll() is None and time.monotonic() < deadline, rollout.communicate()
            time.sleep(0.2)
        at_50 = replicas(fleet, lambda i: i["traffic"]["weight"] == 50, 10)
        time.sleep(2)  # the step routes customers to the candidate
        copied = {k: v for k, v in client.get_registered_model(MODEL).tags.items() if k.startswith("canary.")}
        answered = load.versions.get(version, 0)
        rollout.send_signal(signal.SIGTERM)
        _, err = rollout.communicate(timeout=120)
    finally:
        if rollout.poll() is None:
            rollout.kill()
    assert rollout.returncode == 3 and answered > 0, err[-2000:]  # the copied state was the one serving
    assert "canary" not in client.get_registered_model(MODEL).aliases and production(fleet) == before
    replicas(fleet, lambda i: i["canary"] is None and i["traffic"]["mode"] == "off", 10)
    # when: someone with registry write access and no key points @canary at the version again and writes the
    # copied tags back (signature and all)
    seen = load.versions.get(version, 0)
    client.set_registered_model_alias(MODEL, "canary", version)
    try:
        for key, value in copied.items():
            client.set_registered_model_tag(MODEL, key, value)
        # then: every replica refuses it (its rollout ended in the ledger) and says so; production answers everyone
        infos = replicas(fleet, refused("ended"), 10)
        time.sleep(2)  # a few more polls and customers
        monkeypatch.setenv("RELEASE_VERIFY_KEY", str(fleet["home"] / "keys" / "release.pub"))  # status as CI runs it
        status = json.loads(run("status", "--json", sets=[])[1])
        monkeypatch.delenv("RELEASE_VERIFY_KEY")
    finally:
        client.delete_registered_model_alias(MODEL, "canary")
        end(client, version, None)
    assert load.versions.get(version, 0) == seen, load.versions  # not one customer answered by it
    assert all(i["canary"] is None and i["traffic"]["mode"] == "off" for i in infos)
    assert all(i["refused_traffic"]["refused"]["rollout"] == at_50[0]["traffic"]["rollout"] for i in infos)
    assert status["canary"]["refused"] == "ended" and status["canary_states"].startswith("canary states are verified")


def test_a_canary_state_past_its_expiry_is_off_on_every_replica(fleet, load):
    # given: a signed state of weight 100, bound to a started rollout, valid for 20 s (a rollout that died unseen)
    client, version = fleet["client"], released_not_serving(fleet)
    rollout = begin(client, version, 100, expires_in=20)
    try:
        replicas(fleet, lambda i: i["traffic"]["weight"] == 100, 20)
        time.sleep(1)
        answered = load.versions.get(version, 0)
        # then: past its expiry every replica reads it as off, says why, and production answers everyone
        infos = replicas(fleet, refused("expired"), 40)
        seen = load.versions.get(version, 0)
        time.sleep(2)
    finally:
        end(client, version, rollout)
    assert answered > 0 and load.versions.get(version, 0) == seen
    assert all(i["canary"] is None and "expired at" in i["refused_traffic"]["refused"]["reason"] for i in infos)


def test_an_unsigned_weight_of_100_answers_no_customer_with_or_without_a_verify_key(fleet, load):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.holder import ModelHolder
    from api.settings import Settings
    from api.source import RegistrySource

    # given: someone with registry write access and no key: @canary at a released version production does not
    # serve, and a canary state of weight 100 written by hand, with no signature
    client, version = fleet["client"], released_not_serving(fleet)
    seen = load.versions.get(version, 0)
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
    rollout = Rollout("hand", datetime.now(UTC).isoformat(timespec="seconds"), "alias_history.0", "0" * 64)
    client.set_registered_model_alias(MODEL, "canary", version)
    try:
        alias_moves.set_traffic(client, MODEL, Traffic("canary", version, 100, rollout=rollout, expires=expires), None)
        # and a replica of this process on the same registry without RELEASE_VERIFY_KEY (the fleet's have one)
        settings = Settings(model_name=MODEL, reload_interval_s=0.5, entity_id_field="customerID",
                            model_info_token=INFO_TOKEN, decision_client_budget=10**6)  # fmt: skip
        holder = ModelHolder(source=RegistrySource(settings, client, verify_key=None))
        asyncio.run(holder.refresh())
        with TestClient(create_app(holder, settings)) as unsigned:
            answers = [unsigned.post("/predict", json={"records": fleet["records"][:1]}) for _ in range(30)]
            public, info = unsigned.get("/model").json(), unsigned.get("/model", headers=ADMIN).json()
        # then: the fleet's replicas refuse it as unsigned, this one as a canary weight without a key
        infos = replicas(fleet, refused("signature"), 10)
        time.sleep(2)
    finally:
        client.delete_registered_model_alias(MODEL, "canary")
        end(client, version, None)
    assert {a.headers["X-Model-Version"] for a in answers} == {production(fleet)}
    assert load.versions.get(version, 0) == seen  # no customer answered by the canary, on any replica
    assert public["canary_states"].startswith("UNSIGNED") and "anyone with write access" in public["canary_states"]
    assert info["refused_traffic"]["refused"]["kind"] == "unsigned_canary" and info["traffic"]["mode"] == "off"
    assert all(i["canary"] is None for i in infos)
