"""Progressive delivery against real processes: a tracking server, two API replicas, live traffic, the real commands.

One module-wide fleet: an `mlflow server`, production deployed on it, two
replicas following production and the canary alias, and a traffic generator
sending one-record requests for a few hundred customers. Each test registers
its own candidate and rolls it out (phases shortened to seconds by --set).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import skops.io
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.safe_model import ALLOWED_TYPES, artifact_digest
from api.release.traffic import Traffic
from pipeline.cli import main
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import prepare
from pipeline.runtime.api_process import uvicorn_process
from pipeline.runtime.tracking_server import tracking_server
from pipeline.store import registry

from ..conftest import ROOT
from ..crafted import child_out_of_range
from .test_api_live import wait_ready

pytestmark = pytest.mark.integration
MODEL = "churn-classifier"
# Phases of seconds instead of minutes; the rules are the defaults of params.yaml.
FAST = [
    "rollout.shadow.min_requests=40", "rollout.shadow.min_duration_s=2",
    "rollout.steps=[{weight: 20, min_duration_s: 2, min_requests: 60}, {weight: 50, min_requests: 60}]",
    "rollout.phase_timeout_s=90", "rollout.poll_s=0.5",
    # Across two sets of customers, score PSI over the tens of requests of these short steps is sampling noise;
    # the shadow phase still judges it, on the same records for both versions.
    "rollout.step_rules.max_score_psi=null",
    # A p99 of a few dozen requests is their slowest one: a loaded test machine's pause must not read as a slow
    # version (the slow candidate below answers five times slower than production)
    "rollout.step_rules.max_p99_ratio=3",
    "rollout.bake.duration_s=12", "rollout.bake.poll_s=1", "rollout.bake.min_requests=30",
]  # fmt: skip


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


class Load(threading.Thread):
    """One-record requests for many customers, to both replicas in turn, until stopped; answers kept by version."""

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
            try:
                answer = clients[i % len(clients)].post("/predict", json={"records": [record]})
                self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
                version = answer.headers.get("X-Model-Version", "")
                self.versions[version] = self.versions.get(version, 0) + 1
            except httpx.HTTPError:
                self.statuses[0] = self.statuses.get(0, 0) + 1
            i += 1
            time.sleep(0.005)


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
               "RELEASE_VERIFY_KEY": str(keys / "release.pub")}  # fmt: skip
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
    return registry.alias_version(fleet["client"], MODEL, "production")


def report() -> dict:
    return json.loads(Path("reports/rollout.json").read_text())


def api_args(fleet) -> list[str]:
    return [a for url in fleet["urls"] for a in ("--api-url", url)]


def test_a_good_candidate_goes_through_shadow_and_each_step_then_production(fleet, load):
    # given: a retrain of production, registered and smoke-tested
    version = candidate("data.rows=3000")
    before = production(fleet)
    # when: it is rolled out against live traffic
    code, _ = run("rollout", "--version", version, *api_args(fleet))
    # then: every phase passed, it was promoted, and the canary is gone
    state = report()
    shutil.copy("reports/rollout.md", "reports/rollout-promoted.md")  # kept for a reader of the test's folder
    assert code == 0, (state, [httpx.get(url + "/model").json() for url in fleet["urls"]])
    assert [p["name"] for p in state["phases"]] == ["shadow", "canary 20 %", "canary 50 %"]
    assert all(p["passed"] for p in state["phases"]) and state["verdict"] == "passed"
    assert {r["rule"] for r in state["phases"][0]["rules"]} == {"max_disagreement", "max_score_psi"}
    assert {r["rule"] for r in state["phases"][1]["rules"]} == {"max_error_ratio", "max_p99_ms", "max_p99_ratio"}
    assert production(fleet) == version != before
    client = fleet["client"]
    assert "canary" not in client.get_registered_model(MODEL).aliases
    assert client.get_model_version(MODEL, version).tags[contract.ROLLOUT] == "passed"
    assert load.versions.get(version, 0) > 20 and set(load.statuses) == {200}  # it answered customers itself
    assert run("status", "--json", sets=[])[1] and json.loads(run("status", "--json", sets=[])[1])["anomalies"] == []


def test_the_replicas_agree_on_the_weight_within_a_poll(fleet):
    # given: a canary state written as rollout writes it (lock, signature)
    client, version = fleet["client"], production(fleet)
    from pipeline.core.release_keys import signing_key

    registry.set_traffic(client, MODEL, Traffic("canary", version, 30, 0.0), signing_key())
    client.set_registered_model_alias(MODEL, "canary", version)
    try:
        # then: both replicas route with the same weight within two polls
        deadline = time.monotonic() + 5
        while True:
            seen = [httpx.get(url + "/model").json()["traffic"] for url in fleet["urls"]]
            if all(t == {"mode": "canary", "weight": 30, "shadow_share": 0.0} for t in seen):
                break
            assert time.monotonic() < deadline, seen
    finally:
        registry.set_traffic(client, MODEL, Traffic(), signing_key())
        client.delete_registered_model_alias(MODEL, "canary")


def test_a_slow_candidate_is_aborted_at_the_step_that_catches_it_and_production_never_moves(fleet, load):
    # given: a forest of many deep trees: it passes gate and smoke, but answers far slower than production
    slow = ["model.type=random_forest", "model.random_forest.n_estimators=300", "model.random_forest.max_depth=null",
            "gates.metrics={f1: {min: 0.3}}", "data.rows=3000"]  # fmt: skip
    version = candidate(*slow)
    before = production(fleet)
    # when: rolled out with the shadow's comparisons off (only the canary steps judge it)
    sets = [*FAST, "rollout.shadow.max_disagreement=null", "rollout.shadow.max_score_psi=null"]
    code, _ = run("rollout", "--version", version, *api_args(fleet), sets=sets)
    # then: the first canary step fails its latency rule; production is where it was; the canary is gone
    state = report()
    shutil.copy("reports/rollout.md", "reports/rollout-aborted.md")
    assert code == 1 and state["verdict"] == "aborted"
    failed = [r for p in state["phases"] for r in p["rules"] if not r["passed"]]
    assert state["phases"][-1]["name"] == "canary 20 %" and {r["rule"] for r in failed} & {
        "max_p99_ratio",
        "max_p99_ms",
    }
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
    # then: the shadow phase fails on disagreement, no canary step ran, production never moved
    state = report()
    assert code == 1 and state["verdict"] == "aborted"
    assert [p["name"] for p in state["phases"]] == ["shadow"]
    rules = {r["rule"]: r for r in state["phases"][0]["rules"]}
    assert not rules["max_disagreement"]["passed"] and rules["max_disagreement"]["value"] > 0.05
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
    from pipeline.core.release_keys import signing_key

    client.set_registered_model_alias(MODEL, "canary", version)
    registry.set_traffic(client, MODEL, Traffic("canary", version, 50, 0.0), signing_key())
    try:
        deadline = time.monotonic() + 60
        while not all(
            (httpx.get(url + "/model").json()["refused_canary"] or {}).get("version") == version
            for url in fleet["urls"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        infos = [httpx.get(url + "/model").json() for url in fleet["urls"]]
    finally:
        registry.set_traffic(client, MODEL, Traffic(), signing_key())
        client.delete_registered_model_alias(MODEL, "canary")
    assert all(i["version"] == before and i["canary"] is None and i["traffic"]["mode"] == "off" for i in infos)
    # signed verdicts cover the digest: the rewritten one refuses the canary before any load (where nothing is
    # signed, test_crafted_release shows these bytes refused by the structure check in the probe child)
    assert all("not signed by the release key" in i["refused_canary"]["reason"] for i in infos), infos
    assert load.statuses.get(500, 0) == 0 and version not in load.versions  # production answered everyone


def test_watch_rolls_back_a_production_that_breaks_its_clients_during_the_bake(fleet):
    # given: production, with a previous version to go back to, and traffic of which a fifth now fails (4xx)
    before = production(fleet)
    traffic = Load(fleet["urls"], fleet["records"], bad_share=0.2)
    traffic.start()
    try:
        code, _ = run("watch", *api_args(fleet))
    finally:
        traffic.halt.set()
        traffic.join(10)
    # then: the bake's client-error rule failed, and rollback moved production back, naming the rule
    state = json.loads(Path("reports/watch.json").read_text())
    assert code == 1 and state["verdict"] == "rolled back" and "max_client_error_ratio" in state["reason"]
    assert production(fleet) != before
    last = json.loads(run("status", "--json", sets=[])[1])["history"][-1]
    assert last["kind"] == "rollback" and "watch: max_client_error_ratio" in last["reason"]


def test_a_rollout_racing_a_rollback_keeps_the_ledger_one_chain(fleet, load):
    import subprocess
    import sys

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
