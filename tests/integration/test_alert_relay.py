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
import warnings
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
AM_USER, AM_PASSWORD = "prometheus", "alertmanager-test-password"


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
    # compose's web config: basic auth on Alertmanager's API (a bcrypt hash, as `htpasswd -nbB` writes it)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        hashed = crypt.crypt(AM_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**4))
    web = tmp_path / "alertmanager-web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {AM_USER: hashed}}))
    port = free_port()
    with open(tmp_path / "alertmanager.log", "wb") as out:
        process = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={path}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", f"--web.config.file={web}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # wait_for cannot send credentials
            assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/ready", auth=(AM_USER, AM_PASSWORD)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "alertmanager did not start"
            time.sleep(0.2)
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
    # (without Alertmanager's basic auth, nobody may: a forged alert is refused before any route)
    forged = httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=10)
    assert forged.status_code == 401
    posted = httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts, timeout=10, auth=(AM_USER, AM_PASSWORD))
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


def test_a_flood_of_forged_firings_dispatches_each_version_once(relay, github):
    # given: a sender holding the relay's token (the worst case: Alertmanager's own retries look alike)
    url, _ = relay
    auth = {"Authorization": f"Bearer {RELAY_TOKEN}"}
    # when: 4,000 "new" firings of production's version, each with its own fingerprint and start time,
    # a version in Arabic-Indic digits, and a reason carrying newlines and Markdown
    body = {"alerts": [
        {**firing("ChurnApiHigh5xxRatio", "x", action="rollback"), "status": "firing", "fingerprint": f"f{i}",
         "startsAt": f"2026-01-01T00:00:{i % 60:02d}.{i:06d}Z"} for i in range(4000)
    ]}  # fmt: skip
    body["alerts"][:2] = [
        {**firing("Arabic", "x", action="rollback", version="٣"), "status": "firing"},
        {**firing("Crafted\n# [pwn](http://x)", "**bold**\nline", action="rollback", version="8"), "status": "firing"},
    ]
    too_many = httpx.post(f"{url}/alert", json={"alerts": body["alerts"][:501]}, headers=auth, timeout=30)
    assert too_many.status_code == 400 and "more than 500" in too_many.json()["error"]
    answers = [httpx.post(f"{url}/alert", json={"alerts": body["alerts"][i : i + 400]}, headers=auth, timeout=30)
               for i in range(0, 4000, 400)]  # fmt: skip
    # then: one dispatch per version (7, and the crafted 8), the rest already sent; the Arabic digit ignored
    assert all(answer.status_code == 200 for answer in answers)
    assert sorted(r["body"]["client_payload"]["version"] for r in github.requests) == ["7", "8"]
    assert sum(len(answer.json()["already_sent"]) for answer in answers) == 3997
    assert "Arabic: no version label" in " ".join(answers[0].json()["ignored"])
    [crafted] = [r["body"]["client_payload"] for r in github.requests if r["body"]["client_payload"]["version"] == "8"]
    assert crafted["reason"] == "Crafted pwn (http://x): bold line"


def test_the_relay_will_not_start_without_its_token(github):
    env = {**os.environ, "GITHUB_REPOSITORY": "o/r", "GITHUB_TOKEN": GITHUB_TOKEN, "GITHUB_API_URL": github.url}
    for name in ("ALERT_RELAY_TOKEN", "ALERT_RELAY_INSECURE_NO_TOKEN"):
        env.pop(name, None)
    started = subprocess.run(
        [sys.executable, "-m", "pipeline", "alert-relay", "--port", str(free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 2 and "needs ALERT_RELAY_TOKEN" in started.stderr


def test_a_flood_forged_through_alertmanager_dispatches_once(alertmanager, github):
    # given: 300 "different" firing alerts about version 7 (each its own labels, so its own fingerprint)
    now = datetime.now(UTC)
    flood = [
        {**firing("ChurnApiHigh5xxRatio", f"forged {i}", action="rollback", instance=f"replica-{i}"),
         "startsAt": (now - timedelta(seconds=i)).isoformat()}
        for i in range(300)
    ]  # fmt: skip
    posted = httpx.post(f"{alertmanager}/api/v2/alerts", json=flood, timeout=30, auth=(AM_USER, AM_PASSWORD))
    assert posted.status_code == 200, posted.text
    # then: one dispatch reaches GitHub, however many notifications Alertmanager sends
    deadline = time.monotonic() + 30
    while not github.requests and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    assert [r["body"]["client_payload"]["version"] for r in github.requests] == ["7"]
