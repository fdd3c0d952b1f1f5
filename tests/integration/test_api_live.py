"""The API as a real uvicorn process against a sqlite registry."""

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.runtime.api_process import uvicorn_process
from pipeline.runtime.processes import free_port, stop, wait_for

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
            assert cli("rollback", "--to", "2", "--reason", "forward again") == 0  # never promoted again
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
    from pipeline.store.training_runs import load_test_set

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


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Answers(threading.Thread):
    """Reads whatever the server sends on many sockets at once, until told to stop."""

    def __init__(self):
        import selectors

        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        self.received: dict[socket.socket, bytes] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def watch(self, sock: socket.socket) -> None:
        import selectors

        with self.lock:
            self.received[sock] = b""
            self.selector.register(sock, selectors.EVENT_READ)

    def run(self):
        while not self.stop.is_set():
            with self.lock:
                ready = self.selector.select(timeout=0) if self.received else []
            for key, _ in ready:
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                with self.lock:
                    if data:
                        self.received[key.fileobj] += data
                    else:
                        self.selector.unregister(key.fileobj)
            time.sleep(0.005)


def test_200_slow_large_bodies_stay_within_the_budget_while_predictions_are_answered(production_registry, tmp_path):
    # Scaled down 32 times from the defaults (256 MiB a worker, bodies up to 20 MiB): a budget of 8 MiB, bodies of
    # 1 MiB. 200 clients offer 200 MiB, as 200 of 20 MiB would offer 4 GB, the pod's limit.
    import subprocess
    import sys

    uri, version, X, _ = production_registry
    record = json.loads(X.head(1).to_json(orient="records"))[0]
    budget, body = 8 << 20, 1 << 20
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": uri, "MODEL_NAME": "churn-classifier", "HOST": "127.0.0.1",
        "PORT": str(port), "METRICS_PORT": str(metrics_port), "PYTHONPATH": str(ROOT), "WEB_CONCURRENCY": "1",
        "MAX_BODY_BYTES": str(body), "MAX_BODY_BYTES_IN_FLIGHT": str(budget), "BODY_TIMEOUT_S": "60",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "api"], env=env, stdout=subprocess.DEVNULL)
    answers, slow = Answers(), []
    try:
        wait_for(url + "/health", 60, process)
        wait_ready(url)
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(20):  # warm: what honest traffic allocates is in the baseline
                assert http.post("/predict", json={"records": [record]}).status_code == 200
            baseline = _rss_kb(process.pid)
            answers.start()
            head = f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: {body}\r\n\r\n".encode()
            for _ in range(200):  # each sends its head and all of its body the socket takes, but the last byte
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(head)
                sock.setblocking(False)
                answers.watch(sock)
                slow.append(sock)
                sent, chunk = 0, b" " * (256 << 10)
                while sent < body - 1:
                    try:
                        sent += sock.send(chunk[: body - 1 - sent])
                    except (BlockingIOError, OSError):
                        break
            peak, honest = 0, []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # the slow ones hold; honest requests are answered meanwhile
                peak = max(peak, _rss_kb(process.pid))
                answer = http.post("/predict", json={"records": [record]})
                honest.append((answer.status_code, answer.headers.get("x-model-version")))
            peak = max(peak, _rss_kb(process.pid))
            with answers.lock:
                received = list(answers.received.values())
            refused = [r for r in received if r.startswith(b"HTTP/1.1 503")]
            public = http.get("/metrics").status_code
    finally:
        answers.stop.set()
        for sock in slow:
            sock.close()
        time.sleep(1.5)  # the worker hands its counts to the metrics files every second
        metrics = (
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text if process.poll() is None else ""
        )
        stop(process)
    held = len(slow) - len(refused)
    print(f"RSS {baseline // 1024} MiB before, {peak // 1024} MiB at most while 200 bodies were offered; "
          f"{held} held, {len(refused)} refused, {len(honest)} honest predictions answered")  # fmt: skip
    # the budget held: 7 bodies of 1 MiB fill the 7/8 large bodies may take; the other 193 were refused, 503
    assert held == 7 and len(refused) == 193
    assert all(b"\r\nretry-after: 1\r\n" in r for r in refused)
    assert (peak - baseline) < (budget + (24 << 20)) // 1024, (baseline, peak)  # unbounded: 200 MiB and more
    assert honest and set(honest) == {(200, str(version))}
    # metrics on their own port only; the budget's gauge back at 0 once the slow clients left, their refusals counted
    assert public == 404
    assert re.search(r"^api_body_budget_refused_total 193\.0$", metrics, re.M)
    assert re.search(r"^api_body_bytes_in_flight 0\.0$", metrics, re.M)  # summed over live workers
    assert re.search(r'^api_requests_total\{endpoint="/predict",status="499",version=""\} 7\.0$', metrics, re.M)


def test_metrics_port_serves_every_workers_counts_and_the_public_port_none(production_registry, tmp_path):
    uri, version, X, _ = production_registry
    record = json.loads(X.head(1).to_json(orient="records"))[0]
    metrics_port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": uri, "MODEL_NAME": "churn-classifier", "WEB_CONCURRENCY": "2",
        "METRICS_PORT": str(metrics_port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }  # fmt: skip
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with uvicorn_process(env) as url:
        deadline = time.monotonic() + 60
        while len(set(re.findall(r'api_serving_model_version\{pid="(\d+)"\} [1-9]', _text(metrics_url)))) < 2:
            assert time.monotonic() < deadline, "two workers did not both load the model"
            time.sleep(0.2)
        for _ in range(40):  # a new connection each time: both workers get a share
            assert httpx.post(url + "/predict", json={"records": [record]}, timeout=30).status_code == 200
        assert httpx.get(url + "/metrics").status_code == 404
        deadline, text = time.monotonic() + 10, ""
        expected = f'api_requests_total{{endpoint="/predict",status="200",version="{version}"}} 40.0'
        while expected not in text and time.monotonic() < deadline:
            time.sleep(0.3)  # each worker hands its counts over every second
            text = _text(metrics_url)
    assert expected in text


def _text(url: str) -> str:
    try:
        return httpx.get(url, timeout=10).text
    except httpx.HTTPError:  # not listening yet
        return ""
