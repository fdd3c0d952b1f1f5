"""The API as a real uvicorn process against a sqlite registry."""

import json
import threading
import time

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.runtime.api_process import uvicorn_process

from ..conftest import ROOT

pytestmark = pytest.mark.integration
POLL_S = 0.5
SWAP_S = 60  # a version this replica has not served yet is first loaded and probed in a child process


class Hammer(threading.Thread):
    """Keeps sending one-record predictions and remembers every answer."""

    def __init__(self, url: str, record: dict):
        super().__init__(daemon=True)
        self.url, self.record = url, record
        self.answers: list[tuple[int, str | None]] = []
        self.stop = threading.Event()

    def run(self):
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    r = http.post("/predict", json={"records": [self.record]})
                    self.answers.append((r.status_code, r.json().get("model_version")))
                except httpx.HTTPError as exc:
                    self.answers.append((0, repr(exc)))

    def wait_for_version(self, version: str, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.answers and self.answers[-1][1] == version:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"still answering {self.answers[-1] if self.answers else None} after {timeout_s}s")


def test_service_follows_promote_and_rollback_without_failing_a_request(project, cli, releases):
    releases.restore(project, versions=2)
    run_id = cli.status()["versions"][0]["run_id"]
    with open(MlflowClient().download_artifacts(run_id, "smoke/examples.json")) as f:
        record = json.load(f)["records"][0]
    env = {"MODEL_NAME": "churn-classifier", "MODEL_ALIAS": "production", "RELOAD_INTERVAL_S": str(POLL_S)}
    with uvicorn_process(env) as url:
        wait_ready(url)
        hammer = Hammer(url, record)
        hammer.start()
        try:
            hammer.wait_for_version("2", 5)
            assert cli("rollback", "--reason", "live swap test") == 0
            back = hammer.wait_for_version("1", SWAP_S)
            assert cli("promote", "--version", "2") == 0
            forward = hammer.wait_for_version("2", 10 * POLL_S)  # served before: its bytes are not probed again
            time.sleep(0.2)
        finally:
            hammer.stop.set()
            hammer.join(10)
        model = httpx.get(url + "/model").json()
        metrics = httpx.get(url + "/metrics").text
    statuses = {status for status, _ in hammer.answers}
    assert statuses == {200}, [a for a in hammer.answers if a[0] != 200][:5]
    served = [v for _, v in hammer.answers]
    first_1, last_1 = served.index("1"), len(served) - 1 - served[::-1].index("1")
    assert set(served[first_1 : last_1 + 1]) == {"1"}  # one clean switch each way, no flapping
    assert model["version"] == "2" and model["alias"] == "production"
    assert 'api_model_reloads_total{result="success"} 3.0' in metrics
    print(f"swap after rollback {back:.2f}s, after promote {forward:.2f}s, {len(served)} requests, 0 failed")


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "inputs", "instances"])
def test_invocations_match_mlflow_pyfunc(served_production, fmt):
    url, X, expected = served_production
    if fmt == "dataframe_split":
        payload = {fmt: json.loads(X.to_json(orient="split", index=False))}
    else:
        payload = {fmt: json.loads(X.to_json(orient="records"))}
    response = httpx.post(url + "/invocations", json=payload, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}


@pytest.fixture(scope="module")
def production_registry(tmp_path_factory, churn_csv, empty_mlflow_db):
    """A sqlite registry with one production version, and pyfunc's predictions on its test set."""
    import shutil

    from pipeline.cli import main
    from pipeline.store.tracking import load_test_set

    root = tmp_path_factory.mktemp("served")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    args = [
        "--params",
        str(ROOT / "params.yaml"),
        "--set",
        f"data.path={churn_csv}",
        "--set",
        f"registry.artifact_location={root / 'artifacts'}",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        assert main(["run", *args]) == 0
        client = MlflowClient(uri)
        version = client.get_model_version_by_alias("churn-classifier", "production")
        X, _ = load_test_set(client, version.run_id)
        expected = mlflow.pyfunc.load_model(f"models:/churn-classifier/{version.version}").predict(X).tolist()
    return uri, version.version, X, expected


@pytest.fixture(scope="module")
def served_production(production_registry):
    """That version served by one uvicorn worker."""
    uri, _, X, expected = production_registry
    with uvicorn_process({"MLFLOW_TRACKING_URI": uri, "MODEL_NAME": "churn-classifier"}) as url:
        wait_ready(url)
        yield url, X, expected


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(url + "/ready").status_code != 200:
        assert time.monotonic() < deadline, httpx.get(url + "/ready").text
        time.sleep(0.1)


def test_hostile_requests_never_get_a_5xx_and_keep_the_connection_open(served_production):
    import http.client
    from urllib.parse import urlparse

    url, X, _ = served_production
    record = X.head(1).to_json(orient="records")[1:-1]
    target = urlparse(url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    hostile = [
        ("/predict", b"[" * 100_000 + b"]" * 100_000),
        ("/invocations", b"[" * 100_000 + b"]" * 100_000),
        ("/predict", record.replace('"tenure":', '"tenure":1e308,"x":').encode()),
        (
            "/invocations",
            b'{"dataframe_records": [' + record.replace('"tenure":', '"tenure":1e308,"t":').encode() + b"]}",
        ),
        ("/predict", '{"records": [{"gender": "\xe9"}]}'.encode("latin-1")),
        ("/predict", b'{"records": [{"tenure": NaN}]}'),
    ]
    conn.connect()
    socket = conn.sock
    for path, body in hostile:
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        assert answer.status < 500, (path, answer.status)
        assert answer.getheader("connection") != "close"
    conn.request("POST", "/predict", body=b'{"records": [' + record.encode() + b"]}")
    assert conn.getresponse().status == 200
    assert conn.sock is socket  # the same keep-alive connection answered all of them


def test_two_workers_each_serve_and_metrics_count_every_request(production_registry, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    uri, version, X, _ = production_registry
    record = json.loads(X.head(1).to_json(orient="records"))[0]
    stale = tmp_path / "counter_99999.db"
    stale.write_bytes(b"left by a dead process")  # must be cleaned at start, not summed
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MODEL_NAME": "churn-classifier",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    with uvicorn_process(env) as url:
        workers = _serving_workers(url, version)

        def one(_):  # a new connection each time, so both workers get a share
            return httpx.post(url + "/predict", json={"records": [record]}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(300)))
        time.sleep(2)  # a worker hands its live counts to the shared metrics every second, off the request path
        scrapes = [httpx.get(url + "/metrics", timeout=10).text for _ in range(10)]
    assert statuses == [200] * 300
    assert not stale.exists()
    assert len(workers) == 2  # two live processes, each serving the production version
    for text in scrapes:  # whichever worker answers, it counts all of them
        assert f'api_requests_total{{endpoint="/predict",status="200",version="{version}"}} 300.0' in text
        assert f'api_predictions_total{{version="{version}"}} 300.0' in text


def _serving_workers(url: str, version: str, timeout_s: float = 60) -> set[str]:
    """The pids whose gauge says they serve `version`, once two do."""
    import re

    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(url + "/metrics", timeout=10).text
        pids = set(re.findall(rf'api_serving_model_version{{pid="(\d+)"}} {version}\.0', text))
        if len(pids) >= 2 or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)
