"""Monitoring for real: two API replicas, a Prometheus scraping them with deploy/'s rules, live traffic.

One module-scoped scenario (two to three minutes, most of it the two deploys) runs once, and the tests read
what it saw:

1. a registry with production version 1, served by two API replicas
   (`python -m api`) following @production every second, and a real
   Prometheus scraping both every second (job="churn-api",
   environment="test") and evaluating every second a copy of
   deploy/prometheus/rules.yml: the same expressions, only the alerts' `for:`
   waits shortened (minutes become seconds), so alerts fire within a test;
2. while the replicas load: version 2 gated, registered and smoke-tested, not
   promoted;
3. unshifted traffic (the run's stored test set, one-record and batch
   /predict requests, a few 4xx) to version 1: the drift alerts must stay
   quiet and every feature's PSI stay small;
4. `promote --version 2` while both replicas serve (the "Release moves"
   annotation), then traffic shifted away from the training data to version
   2 until ChurnApiFeatureDrift fires, naming the shifted features and the version;
5. production's alias moved by hand to a version that never passed gate and
   smoke (the "Refused versions" annotation): the replicas refuse it and
   keep serving version 2;
6. afterwards, every query of the Grafana dashboard (panels, annotations,
   the environment variable) must return data from Prometheus' HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.runtime.api_process import uvicorn_process
from pipeline.runtime.processes import free_port, stop, wait_for
from pipeline.store.training_runs import load_test_set

from ..conftest import ROOT
from ..deploy.test_grafana import dashboard, panels
from .released import QuietCli
from .test_api_live import wait_ready
from .test_flow import deploy

pytestmark = pytest.mark.integration

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
ENVIRONMENT = "test"
MODEL = "churn-classifier"
# Grafana's variables as the dashboard would fill them for this environment.
VARIABLES = {"environment": ENVIRONMENT, "__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
# The drift levels of the rules (ChurnApiFeatureDriftWarning, ChurnApiFeatureDrift).
DRIFT_WARN_PSI, DRIFT_ALERT_PSI = 0.1, 0.25
DRIFT_ALERTS = ("ChurnApiFeatureDrift", "ChurnApiFeatureDriftWarning")
# What the shifted traffic changes: a contract mix training never had, tenure and charges far out of
# the training range, and a payment method training never saw. Nothing else changes.
SHIFT = {"Contract": "Two year", "tenure": 600, "MonthlyCharges": 900.0, "PaymentMethod": "Bitcoin"}
UNSHIFTED_S = 5.0  # unshifted traffic to version 1
FIRE_TIMEOUT_S = 60.0


# --- the scenario ---------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the scenario observed; the tests assert on it."""

    prometheus: str = ""
    replicas: list[str] = field(default_factory=list)
    features: set[str] = field(default_factory=set)
    # unshifted traffic to version 1
    unshifted_answers: Counter[int] = field(default_factory=Counter)
    unshifted_counts: dict[str, float] = field(default_factory=dict)
    unshifted_psi: dict[str, float] = field(default_factory=dict)
    unshifted_drift_alerts: list[dict] = field(default_factory=list)  # any pending or firing, at any poll
    # shifted traffic to version 2
    swap_s: float = 0.0
    shifted_answers: Counter[int] = field(default_factory=Counter)
    shifted_psi: dict[str, float] = field(default_factory=dict)
    fired_after_s: float | None = None
    alerts_when_fired: list[dict] = field(default_factory=list)
    # a version moved to by hand, never released
    refused_version: str = ""
    refused_model: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def seen(tmp_path_factory, churn_csv, empty_mlflow_db) -> Iterator[Seen]:
    """Run the whole scenario once; yields what it saw while Prometheus still runs (the dashboard test queries it)."""
    root = tmp_path_factory.mktemp("monitored")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    (root / "data").mkdir()
    shutil.copy(churn_csv, root / "data" / "churn.csv")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    seen = Seen()
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        seen.timings[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()
        print(f"{name}: {seen.timings[name]}s", flush=True)

    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as running:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_SHA", "GITHUB_ACTOR"):
            mp.delenv(name, raising=False)
        cli = QuietCli()
        # 1. production version 1, served by two replicas and scraped by Prometheus
        assert deploy(cli) == "1"
        lap("deploy version 1")
        env = {"MODEL_NAME": MODEL, "MODEL_ALIAS": "production", "RELOAD_INTERVAL_S": "1"}
        seen.replicas = [running.enter_context(uvicorn_process(env)) for _ in range(2)]
        prom = seen.prometheus = running.enter_context(prometheus(root / "prometheus", seen.replicas))
        # 2. while they load it: version 2 gated against version 1, registered and smoke-tested, not promoted
        assert cli("train") == 0, cli.err
        run_2 = cli.out.strip()
        assert cli("gate", "--run-id", run_2) == 0 and cli("register", "--run-id", run_2) == 0, cli.err
        assert cli.out.strip() == "2" and cli("smoke", "--version", "2") == 0, cli.err
        client = MlflowClient()
        X, _ = load_test_set(client, client.get_model_version(MODEL, "1").run_id)
        records = json.loads(X.to_json(orient="records"))
        seen.features = set(X.columns)
        lap("prepare version 2")
        for url in seen.replicas:
            wait_ready(url)
        eventually(lambda: len(targets_up(prom)) == 2, 30, "Prometheus scrapes both replicas")
        lap("replicas ready")

        # 3. unshifted traffic to version 1: the drift alerts stay quiet at every look
        load = Load(seen.replicas, records)
        load.start()
        deadline = time.monotonic() + UNSHIFTED_S
        while time.monotonic() < deadline:
            seen.unshifted_drift_alerts += drift_alerts(prom)
            time.sleep(0.5)
        load.finish()
        seen.unshifted_answers = load.answers
        eventually(
            lambda: min(by_feature(query(prom, counts_of("1"))).values(), default=0) >= 500,
            15,
            "Prometheus counts 500 values of every feature for version 1",
        )
        wait_evaluated(prom, after=time.time())  # the PSI and the alerts evaluated on those counts
        seen.unshifted_counts = by_feature(query(prom, counts_of("1")))
        seen.unshifted_psi = by_feature(query(prom, psi_of("1")))
        seen.unshifted_drift_alerts += drift_alerts(prom)
        lap("unshifted traffic")
        print(f"  PSI, version 1: {rounded(seen.unshifted_psi)}; values: {min(seen.unshifted_counts.values()):.0f}+")

        # 4. a release move while serving, then shifted traffic until the drift alert fires
        assert cli("promote", "--version", "2") == 0, cli.err
        started = time.monotonic()
        eventually(lambda: all(served(url) == "2" for url in seen.replicas), 60, "both replicas serve version 2")
        seen.swap_s = time.monotonic() - started
        eventually(
            lambda: {(s["metric"]["version"], s["value"][1]) for s in query(prom, SERVING)} == {("2", "2")},
            15,
            "Prometheus sees both replicas serve version 2",
        )
        lap("promote and swap")
        shifted = Load(seen.replicas, [{**record, **SHIFT} for record in records])
        shifted.start()
        started = time.monotonic()
        while time.monotonic() - started < FIRE_TIMEOUT_S:
            alerts = active_alerts(prom)
            firing = {a["labels"].get("feature") for a in alerts if is_firing(a, "ChurnApiFeatureDrift")}
            if firing >= set(SHIFT):
                seen.fired_after_s = time.monotonic() - started
                seen.alerts_when_fired = alerts
                break
            time.sleep(0.5)
        shifted.finish()
        seen.shifted_answers = shifted.answers
        seen.shifted_psi = by_feature(query(prom, psi_of("2")))
        lap("shifted traffic until the alert fires")
        print(f"  fired after {seen.fired_after_s}s; PSI, version 2: {rounded(seen.shifted_psi)}")

        # 5. production's alias moved by hand to a version that never passed gate and smoke
        v1 = client.get_model_version(MODEL, "1")
        seen.refused_version = str(client.create_model_version(MODEL, v1.source, v1.run_id).version)
        client.set_registered_model_alias(MODEL, "production", seen.refused_version)
        eventually(
            lambda: all((model_info(url).get("refused") or {}).get("version") == seen.refused_version
                        for url in seen.replicas),
            30,
            lambda: f"both replicas refuse version {seen.refused_version}: {[model_info(u) for u in seen.replicas]}",
        )  # fmt: skip
        seen.refused_model = [model_info(url) for url in seen.replicas]
        eventually(
            lambda: bool(query(prom, substitute(annotation("Refused versions")["expr"]))),
            15,
            "the refusal reaches Prometheus",
        )
        lap("refused version")
        yield seen


# --- the tests ------------------------------------------------------------------------------------


def test_unshifted_traffic_keeps_drift_quiet_and_every_psi_small(seen):
    refused = client_errors(seen.unshifted_answers)
    assert set(seen.unshifted_answers) - {200} == set(refused), seen.unshifted_answers  # 200 or 4xx, never a 5xx
    assert sum(refused.values()) > 0 and seen.unshifted_answers[200] > 10 * sum(refused.values())
    # enough values that the alerts' guard (>= 500 in the window) does not keep them quiet by itself
    assert set(seen.unshifted_counts) == seen.features
    assert min(seen.unshifted_counts.values()) >= 500, seen.unshifted_counts
    assert set(seen.unshifted_psi) == seen.features
    large = {feature: psi for feature, psi in seen.unshifted_psi.items() if not psi < DRIFT_WARN_PSI}
    assert large == {}, f"PSI of unshifted traffic: {seen.unshifted_psi}"
    assert seen.unshifted_drift_alerts == []


def test_shifted_traffic_fires_the_drift_alert_naming_the_features_and_the_version(seen):
    assert set(seen.shifted_answers) - {200} == set(client_errors(seen.shifted_answers)), seen.shifted_answers
    assert seen.fired_after_s is not None, f"ChurnApiFeatureDrift did not fire in {FIRE_TIMEOUT_S}s: {seen.shifted_psi}"
    fired = [a for a in seen.alerts_when_fired if is_firing(a, "ChurnApiFeatureDrift")]
    assert {a["labels"]["feature"] for a in fired} == set(SHIFT)  # the shifted ones, no other
    for alert in fired:
        labels, annotations = alert["labels"], alert["annotations"]
        assert labels["version"] == "2" and labels["environment"] == ENVIRONMENT
        assert labels["severity"] == "critical" and labels["action"] == "page"  # drift pages a person, never rolls back
        assert f"feature {labels['feature']}" in annotations["summary"] and "version 2" in annotations["summary"]
        assert float(alert["value"]) > DRIFT_ALERT_PSI
    warned = {a["labels"]["feature"] for a in seen.alerts_when_fired if a["labels"]["alertname"] == DRIFT_ALERTS[1]}
    assert warned == set(SHIFT)  # the warning too (its wait is longer: pending or firing)
    assert {f for f, psi in seen.shifted_psi.items() if psi > DRIFT_ALERT_PSI} == set(SHIFT), seen.shifted_psi


def test_replicas_follow_the_release_move_and_refuse_an_unreleased_version(seen):
    assert seen.swap_s < 60
    for info in seen.refused_model:
        assert info["version"] == "2"  # still serving what passed gate and smoke
        assert info["refused"]["version"] == seen.refused_version and info["refused"]["reason"]


def rounded(psi: dict[str, float]) -> dict[str, float]:
    return {feature: round(value, 3) for feature, value in sorted(psi.items())}


def client_errors(answers: Counter[int]) -> dict[int, int]:
    return {status: n for status, n in answers.items() if 400 <= status < 500}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and query variable of the dashboard."""
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels()
        for target in panel.get("targets", [])
    ]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard()["annotations"]["list"] if "expr" in a]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":  # label_values(SELECTOR, label): its selector
            found.append((f"variable {variable['name']!r}", re.fullmatch(r"label_values\((.+), *\w+\)",
                                                                         variable["definition"])[1]))  # fmt: skip
    return found


# The live quality panel reads the figures of signed quality verdicts (`pipeline quality`), which this scenario
# never records: no labelled predictions here. Its queries are checked where verdicts exist.
LIVE_QUALITY = re.compile(r"\bmodel_(live_f1|gate_f1|live_labelled|quality_failed)\b")


def dashboard_params() -> list:
    return [pytest.param(where, expr, id=where) for where, expr in dashboard_queries() if not LIVE_QUALITY.search(expr)]


@pytest.mark.parametrize(("where", "expr"), dashboard_params())
def test_every_dashboard_query_returns_data(seen, where, expr):
    result = query(seen.prometheus, substitute(expr))
    assert result, f"{where}: no data for {substitute(expr)}"
    values = [float(sample["value"][1]) for sample in result]
    assert any(math.isfinite(v) for v in values), f"{where}: only {values}"
    assert all(sample["metric"].get("environment", ENVIRONMENT) == ENVIRONMENT for sample in result), where


def test_rollout_reads_from_prometheus_the_counts_the_replicas_hold(seen):
    """What rollout and watch judge with PROMETHEUS_URL set equals what they judge from the replicas' /metrics."""
    from pipeline.runtime.live_metrics import Prometheus, Replicas

    # given: traffic has stopped, and the replicas flushed and were scraped since (every second)
    predicted = ("api_feature_values_total", "api_score_bucket", "api_feature_expected_ratio")

    def same() -> bool:
        direct = Replicas(seen.replicas).snapshot()  # a scrape of /metrics flushes the live counts first
        scraped = Prometheus(seen.prometheus).snapshot()
        keys = {key for key in direct if key[0] in predicted}
        return bool(keys) and all(scraped.get(key) == direct[key] for key in keys)

    # then: the two snapshots agree on every drift bin and score bucket of every version, summed over replicas
    eventually(same, 15, "Prometheus' sums equal the replicas' own counts")


def test_release_moves_annotation_shows_the_promotion(seen):
    result = query(seen.prometheus, substitute(annotation("Release moves")["expr"]))
    assert [float(sample["value"][1]) for sample in result] == [2.0]  # production now serves version 2


# --- the stack ------------------------------------------------------------------------------------


@contextlib.contextmanager
def prometheus(home: Path, replicas: list[str]) -> Iterator[str]:
    """A real Prometheus scraping `replicas` and evaluating the test's copy of the rules, every second."""
    home.mkdir()
    (home / "rules.yml").write_text(yaml.safe_dump(shortened_rules(), sort_keys=False, width=1000))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "churn-api",
                "static_configs": [
                    {
                        "targets": [url.removeprefix("http://") for url in replicas],
                        "labels": {"environment": ENVIRONMENT},
                    }
                ],
            }
        ],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (home / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            shutil.which("prometheus") or pytest.fail("prometheus is not installed: apt-get install prometheus"),
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(url + "/-/ready", 30, process)
        except Exception:
            pytest.fail("Prometheus did not start: " + (home / "prometheus.log").read_text()[-2000:])
        yield url
    finally:
        stop(process)
        log.close()


def shortened_rules() -> dict:
    """deploy/prometheus/rules.yml with every alert's `for:` a minute to a second; expressions unchanged."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                value, unit = re.fullmatch(r"(\d+)([smh])", rule["for"]).groups()
                seconds = int(value) * {"s": 1, "m": 60, "h": 3600}[unit]
                rule["for"] = f"{max(1, seconds // 60)}s"
    return rules


class Load:
    """Sends /predict traffic to every replica from threads until `finish`: one-record requests,
    100-record batches, and every 20th one-record request a bad one (a 4xx). Bounded in time."""

    MAX_S = 90.0

    def __init__(self, urls: list[str], records: list[dict]) -> None:
        self.urls, self.records = urls, records
        self.answers: Counter[int] = Counter()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._send, args=(url, size), daemon=True) for url in urls for size in (1, 100)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _send(self, url: str, size: int) -> None:
        deadline = time.monotonic() + self.MAX_S
        position, sent = 0, 0
        with httpx.Client(base_url=url, timeout=30) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                batch = [self.records[(position + i) % len(self.records)] for i in range(size)]
                position, sent = position + size, sent + 1
                if size == 1 and sent % 20 == 0:
                    batch = [{**batch[0], "tenure": "many"}]  # not a number: 422
                try:
                    status = http.post("/predict", json={"records": batch}).status_code
                except httpx.HTTPError:
                    status = 0
                self.answers[status] += 1
                time.sleep(0.005 if size == 1 else 0.05)  # a steady load, not a saturating one: scrapes keep up


# --- Prometheus' HTTP API -------------------------------------------------------------------------

SERVING = f'api:serving_version:workers{{environment="{ENVIRONMENT}"}}'


def query(prom: str, expr: str) -> list[dict]:
    """The instant vector `expr` evaluates to now."""
    answer = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def counts_of(version: str) -> str:
    return f'api:feature_count:15m{{environment="{ENVIRONMENT}", version="{version}"}}'


def psi_of(version: str) -> str:
    return f'api:feature_psi:15m{{environment="{ENVIRONMENT}", version="{version}"}}'


def by_feature(result: list[dict]) -> dict[str, float]:
    return {sample["metric"]["feature"]: float(sample["value"][1]) for sample in result}


def targets_up(prom: str) -> list[dict]:
    targets = httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return [t for t in targets if t["health"] == "up"]


def active_alerts(prom: str) -> list[dict]:
    """Every pending or firing alert."""
    return httpx.get(prom + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]


def drift_alerts(prom: str) -> list[dict]:
    return [a for a in active_alerts(prom) if a["labels"]["alertname"] in DRIFT_ALERTS]


def is_firing(alert: dict, name: str) -> bool:
    return alert["labels"]["alertname"] == name and alert["state"] == "firing"


def wait_evaluated(prom: str, after: float) -> None:
    """Until the drift group, then the alert group, have both been evaluated since `after` (unix time)."""

    def last(group: str) -> float:
        groups = httpx.get(prom + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        (found,) = [g for g in groups if g["name"] == group]
        stamp = re.sub(r"(\.\d{6})\d+", r"\1", found["lastEvaluation"])  # RFC 3339, to the nanosecond
        return datetime.fromisoformat(stamp).timestamp()

    eventually(lambda: last("churn-api.drift") > after, 10, "the drift rules evaluated")
    drift_done = time.time()
    eventually(lambda: last("churn-api.alerts") > drift_done, 10, "the alerts evaluated after them")


def substitute(expr: str) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: VARIABLES[m[1] or m[2]], expr)


def annotation(name: str) -> dict:
    (found,) = [a for a in dashboard()["annotations"]["list"] if a["name"] == name]
    return found


# --- the API --------------------------------------------------------------------------------------


def model_info(url: str) -> dict[str, Any]:
    return httpx.get(url + "/model", timeout=10).json()


def served(url: str) -> str | None:
    return model_info(url).get("version")


def eventually(check: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]) -> None:
    """Poll `check` until it is true; then fail with `what` (a text, or a function describing the state)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s}s: {what if isinstance(what, str) else what()}")
        time.sleep(0.25)
