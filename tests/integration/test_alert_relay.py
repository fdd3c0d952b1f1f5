"""Alert → relay → GitHub, with real processes: Alertmanager 0.25 (deploy/alertmanager's routes), the relay CLI.

GitHub's API is the one stand-in: a small HTTP server in the test that records
the dispatches it receives (GitHub cannot be reached from here).
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import yaml

from pipeline.runtime.processes import free_port, stop, wait_for

from ..conftest import ROOT

pytestmark = pytest.mark.integration
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"  # Debian's name; upstream's binary is `alertmanager`
GITHUB_TOKEN = "ghp_relay_test_token_never_logged"
RELAY_TOKEN = "relay-bearer-token"


class FakeGitHub:
    """Records every request (path, headers, JSON body) and answers 204, as GitHub does for a dispatch."""

    def __init__(self):
        self.requests: list[dict] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorded.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def github():
    fake = FakeGitHub()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def relay(tmp_path, github):
    port = free_port()
    env = {
        **os.environ,
        "GITHUB_REPOSITORY": "example-org/gated-churn-model",
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "GITHUB_API_URL": github.url,
        "ALERT_RELAY_TOKEN": RELAY_TOKEN,
    }
    log = tmp_path / "relay.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "alert-relay", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 60, process)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop(process)


@pytest.fixture
def alertmanager(tmp_path, relay):
    """The real Alertmanager with deploy/alertmanager/alertmanager.yml, its relay receiver pointed at the relay."""
    if not shutil.which(ALERTMANAGER):
        pytest.fail("prometheus-alertmanager is not installed (make system-deps installs it with apt)")
    config = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    config["route"]["group_wait"] = "1s"
    [receiver] = [r for r in config["receivers"] if r["name"] == "rollback-relay"]
    [webhook] = receiver["webhook_configs"]
    webhook["url"] = f"{relay[0]}/alert"
    webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": RELAY_TOKEN}}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp_path / "alertmanager.log", "wb") as out:
        process = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={path}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/-/ready", 60, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def firing(alertname: str, summary: str, **labels: str) -> dict:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": alertname, "environment": "production", "version": "7", **labels},
        "annotations": {"summary": summary},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


def test_a_firing_rollback_alert_dispatches_the_rollback_workflow_once(alertmanager, relay, github):
    # when Prometheus (here: the test) posts a rollback alert and an alert without action=rollback
    alerts = [
        firing("ChurnApiHigh5xxRatio", "production: version 7 answers 9 % of predictions with a 5xx",
               severity="critical", action="rollback"),
        firing("ChurnApiHigh4xxRatio", "production: 30 % of requests to version 7 are refused", severity="warning"),
    ]  # fmt: skip
    posted = httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=10)
    assert posted.status_code == 200, posted.text

    # then exactly one repository_dispatch reaches GitHub, with the bearer token, the reason and the version
    deadline = time.monotonic() + 30
    while not github.requests and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # and no second one follows (the other alert, a duplicate)
    [request] = github.requests
    assert request["path"] == "/repos/example-org/gated-churn-model/dispatches"
    assert request["headers"]["Authorization"] == f"Bearer {GITHUB_TOKEN}"
    assert request["body"]["event_type"] == "rollback"
    payload = request["body"]["client_payload"]
    assert payload["reason"] == "ChurnApiHigh5xxRatio: production: version 7 answers 9 % of predictions with a 5xx"
    assert payload["version"] == "7"
    assert payload["alert"] == {"alertname": "ChurnApiHigh5xxRatio", "environment": "production", "version": "7",
                                "severity": "critical", "action": "rollback"}  # fmt: skip

    # the relay refuses a request without its token, and never logged GitHub's
    url, log = relay
    refused = httpx.post(f"{url}/alert", json={"alerts": []}, timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    bad = httpx.post(f"{url}/alert", content=b"nope", headers={"Authorization": f"Bearer {RELAY_TOKEN}"}, timeout=10)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    assert httpx.get(f"{url}/alert", timeout=10).status_code == 405
    text = log.read_text()
    assert "dispatched rollback of version 7: ChurnApiHigh5xxRatio" in text
    assert GITHUB_TOKEN not in text and RELAY_TOKEN not in text
