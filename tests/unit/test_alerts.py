"""Alertmanager's webhook → repository_dispatch: which alerts roll back, with what payload, once each."""

import json

import httpx
import pytest

from pipeline.core import alerts
from pipeline.runtime.alert_relay import Relay, RelaySettings

STARTS = "2025-01-01T10:00:00.000Z"


def alert(status="firing", fingerprint="f1", starts=STARTS, **labels):
    defaults = {"alertname": "ChurnApiHigh5xxRatio", "environment": "production", "action": "rollback", "version": "7"}
    labels = {**defaults, **labels}
    return {
        "status": status,
        "labels": {k: v for k, v in labels.items() if v is not None},
        "annotations": {"summary": "production: version 7 answers\n 9.1% of predictions with a 5xx", "runbook": "…"},
        "startsAt": starts,
        "fingerprint": fingerprint,
    }


def webhook(*alerts_):
    return {"version": "4", "status": "firing", "receiver": "rollback-relay", "alerts": list(alerts_)}


def test_a_firing_rollback_alert_becomes_one_dispatch_with_reason_version_and_labels():
    decision = alerts.rollback_dispatches(webhook(alert()))
    [dispatch] = decision.dispatches
    assert dispatch.key == f"f1@{STARTS}" and decision.ignored == []
    assert dispatch.body() == {
        "event_type": "rollback",
        "client_payload": {
            "reason": "ChurnApiHigh5xxRatio: production: version 7 answers 9.1% of predictions with a 5xx",
            "version": "7",
            "alert": {
                "alertname": "ChurnApiHigh5xxRatio",
                "environment": "production",
                "action": "rollback",
                "version": "7",
            },
        },
    }


def test_resolved_unlabelled_and_versionless_alerts_are_ignored_and_named():
    decision = alerts.rollback_dispatches(
        webhook(
            alert(status="resolved"),
            alert(action=None, alertname="ChurnApiHigh4xxRatio"),
            alert(action="page"),
            alert(version=None, alertname="NoVersion"),
            alert(version="7; rm -rf /", alertname="OddVersion"),
        )
    )
    assert decision.dispatches == []
    assert decision.ignored == [
        "ChurnApiHigh5xxRatio: resolved, not firing",
        "ChurnApiHigh4xxRatio: not labelled action=rollback",
        "ChurnApiHigh5xxRatio: not labelled action=rollback",
        "NoVersion: no version label naming the version to roll back from",
        "OddVersion: no version label naming the version to roll back from",
    ]


def test_a_long_summary_is_cut_and_a_missing_fingerprint_is_computed_from_the_labels():
    long = alert(fingerprint=None)
    long["annotations"]["summary"] = "x" * 2000
    [dispatch] = alerts.rollback_dispatches(webhook(long)).dispatches
    assert len(dispatch.reason) == alerts.MAX_REASON and dispatch.reason.endswith("…")
    [again] = alerts.rollback_dispatches(webhook(long)).dispatches
    assert dispatch.key == again.key and dispatch.key.endswith(f"@{STARTS}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "no `alerts` list"),
        (b'{"alerts": "x"}', "no `alerts` list"),
        (b'{"alerts": [1]}', r"alerts\[0\] is not an object"),
        (b'{"alerts": [{"labels": {"a": 1}}]}', r"alerts\[0\].labels must map names to strings"),
    ],
)
def test_a_body_that_is_not_a_webhook_is_named(body, message):
    with pytest.raises(alerts.MalformedWebhook, match=message):
        alerts.rollback_dispatches(alerts.parse_webhook(body))


class FakeGitHub:
    """httpx transport recording dispatches; answers `status` (GitHub: 204)."""

    def __init__(self, status=204):
        self.status, self.requests = status, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json={"message": "Bad credentials"} if self.status >= 400 else None)


def relay(github, relay_token=None):
    settings = RelaySettings("org/repo", "ghp_secret_token", "https://github.example/api/v3", relay_token)
    return Relay(settings, transport=httpx.MockTransport(github))


def test_the_relay_dispatches_once_per_alert_and_retries_only_what_failed(capsys):
    github = FakeGitHub()
    the_relay = relay(github)
    body = json.dumps(webhook(alert(), alert(fingerprint="f2", version="8"), alert(action=None))).encode()
    status, answer = the_relay.receive(body)
    assert status == 200 and [d["version"] for d in answer["dispatched"]] == ["7", "8"]
    [request, _] = github.requests
    assert str(request.url) == "https://github.example/api/v3/repos/org/repo/dispatches"
    assert request.headers["Authorization"] == "Bearer ghp_secret_token"
    assert json.loads(request.content)["client_payload"]["version"] == "7"
    # delivered again (Alertmanager's repeat): nothing new is sent; a new firing (new startsAt) is
    status, answer = the_relay.receive(body)
    assert status == 200 and answer["dispatched"] == [] and len(answer["already_sent"]) == 2
    assert the_relay.receive(json.dumps(webhook(alert(starts="2025-01-01T11:00:00Z"))).encode())[0] == 200
    assert len(github.requests) == 3
    # GitHub refusing is a 502 (Alertmanager retries), not remembered as sent, and never prints the token
    failing = relay(FakeGitHub(401))
    status, answer = failing.receive(body)
    assert status == 502 and "answered 401" in answer["failed"][0]["error"]
    assert failing.receive(body)[0] == 502  # tried again
    assert "ghp_secret_token" not in capsys.readouterr().err + json.dumps(answer)
    assert "ghp_secret_token" not in repr(failing.settings)


def test_the_relay_requires_its_bearer_token_when_one_is_set():
    the_relay = relay(FakeGitHub(), relay_token="relay-token")
    assert the_relay.authorized("Bearer relay-token")
    assert not the_relay.authorized(None) and not the_relay.authorized("Bearer wrong")
    assert relay(FakeGitHub()).authorized(None)
    assert the_relay.receive(b"{}")[0] == 400


def test_relay_settings_name_what_is_missing(monkeypatch):
    from pipeline.core.errors import ConfigError

    for name in ("GITHUB_REPOSITORY", "GITHUB_TOKEN", "GITHUB_API_URL", "ALERT_RELAY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="needs GITHUB_REPOSITORY and GITHUB_TOKEN"):
        RelaySettings.from_env()
    monkeypatch.setenv("GITHUB_REPOSITORY", "no-slash")
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    with pytest.raises(ConfigError, match="OWNER/NAME"):
        RelaySettings.from_env()
    monkeypatch.setenv("GITHUB_REPOSITORY", "org/repo")
    assert RelaySettings.from_env() == RelaySettings("org/repo", "t", "https://api.github.com", None)
