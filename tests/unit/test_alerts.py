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
    assert dispatch.key == "production/7/ChurnApiHigh5xxRatio" and decision.ignored == []
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
            alert(version="٣", alertname="ArabicIndicDigit"),
            alert(version="７", alertname="FullwidthDigit"),
        )
    )
    assert decision.dispatches == []
    assert decision.ignored == [
        "ChurnApiHigh5xxRatio: resolved, not firing",
        "ChurnApiHigh4xxRatio: not labelled action=rollback",
        "ChurnApiHigh5xxRatio: not labelled action=rollback",
        "NoVersion: no version label naming the version to roll back from",
        "OddVersion: no version label naming the version to roll back from",
        "ArabicIndicDigit: no version label naming the version to roll back from",
        "FullwidthDigit: no version label naming the version to roll back from",
    ]


def test_a_long_summary_is_cut_and_the_key_is_the_meaning_not_what_the_sender_picked():
    long = alert(fingerprint=None)
    long["annotations"]["summary"] = "x" * 2000
    [dispatch] = alerts.rollback_dispatches(webhook(long)).dispatches
    assert len(dispatch.reason) == alerts.MAX_REASON and dispatch.reason.endswith("…")
    [again] = alerts.rollback_dispatches(webhook(alert(fingerprint="other", starts="2030-01-01T00:00:00Z"))).dispatches
    assert dispatch.key == again.key == "production/7/ChurnApiHigh5xxRatio"


def test_reasons_and_labels_reach_the_workflow_as_plain_single_lines():
    crafted = alert(alertname="Boom\n## [click](https://evil.example)`$(id)`", team="a\r\nb*c*")
    crafted["annotations"]["summary"] = "line one\n\n> **quoted** <script>x</script> | table |"
    [dispatch] = alerts.rollback_dispatches(webhook(crafted)).dispatches
    payload = dispatch.body()["client_payload"]
    for text in [payload["reason"], *payload["alert"].values(), *payload["alert"]]:
        assert "\n" not in text and "\r" not in text
        assert not set(text) & set("#[]`$*<>|\\_!~") or text in payload["alert"]  # names keep underscores
    assert payload["reason"] == "Boom click (https://evil.example) (id): line one quoted script x /script table"
    assert payload["alert"]["team"] == "a b c"


def test_a_body_of_too_many_alerts_is_refused_whole():
    with pytest.raises(alerts.MalformedWebhook, match="more than 500"):
        alerts.rollback_dispatches(webhook(*[alert(fingerprint=str(i)) for i in range(501)]))


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


def quality_alert(action="rollback", **labels):
    """An alert as rules.yml's churn-api.quality group fires it (ModelLiveQualityFailed, or the retrain warning)."""
    name = "ModelLiveQualityFailed" if action == "rollback" else "ModelLiveQualityLow"
    fired = alert(alertname=name, action=action, severity="critical" if action == "rollback" else "warning", **labels)
    fired["annotations"]["summary"] = f"production: version {labels.get('version', '7')} failed its live quality"
    return fired


def test_a_live_quality_alert_rolls_back_exactly_as_the_other_rollback_alerts_do():
    # given the quality alert beside a 5xx alert about the same version
    decision = alerts.rollback_dispatches(webhook(quality_alert(), alert()))
    # then both are rollback dispatches of that version, each keyed by what it means
    assert [d.key for d in decision.dispatches] == [
        "production/7/ModelLiveQualityFailed", "production/7/ChurnApiHigh5xxRatio",
    ]  # fmt: skip
    body = decision.dispatches[0].body()
    assert body["event_type"] == "rollback" and body["client_payload"]["version"] == "7"
    assert body["client_payload"]["reason"] == "ModelLiveQualityFailed: production: version 7 failed its live quality"
    # and it is checked as they are: a version that is not ASCII digits, or no version, dispatches nothing
    refused = alerts.rollback_dispatches(webhook(quality_alert(version="٣"), quality_alert(version=None)))
    assert (
        refused.dispatches == []
        and refused.ignored
        == [
            "ModelLiveQualityFailed: no version label naming the version to roll back from",
        ]
        * 2
    )


def test_retrain_alerts_become_retrain_dispatches_keyed_by_environment_only_where_asked():
    # given a retrain warning for version 7 and one for version 8, a rollback alert and a page
    body = webhook(quality_alert("retrain"), quality_alert("retrain", version="8"), alert(), alert(action="page"))
    # when the relay's rollback-only reading sees them: the retrains are not rollbacks
    only_rollbacks = alerts.rollback_dispatches(body)
    assert [d.event_type for d in only_rollbacks.dispatches] == ["rollback"]
    assert only_rollbacks.ignored[:2] == ["ModelLiveQualityLow: not labelled action=rollback"] * 2
    # when both are read: each retrain is a `retrain` dispatch whose key names the environment, not the version
    decision = alerts.dispatches(body)
    assert [(d.event_type, d.key) for d in decision.dispatches] == [
        ("retrain", "production/retrain/ModelLiveQualityLow"),
        ("retrain", "production/retrain/ModelLiveQualityLow"),
        ("rollback", "production/7/ChurnApiHigh5xxRatio"),
    ]
    assert decision.ignored == ["ChurnApiHigh5xxRatio: not labelled action=rollback or action=retrain"]
    retrain = decision.dispatches[0].body()
    assert retrain == {
        "event_type": "retrain",
        "client_payload": {
            "reason": "ModelLiveQualityLow: production: version 7 failed its live quality",
            "version": "7",
            "alert": {"alertname": "ModelLiveQualityLow", "environment": "production", "action": "retrain",
                      "version": "7", "severity": "warning"},
        },
    }  # fmt: skip


def test_retrain_alerts_pass_the_same_checks_as_rollbacks():
    crafted = quality_alert("retrain", version="7; rm -rf /")
    resolved = {**quality_alert("retrain"), "status": "resolved"}
    crowded = quality_alert("retrain", **{f"l{i}": "x" for i in range(60)})
    decision = alerts.dispatches(webhook(crafted, resolved, crowded))
    assert decision.dispatches == [] and decision.ignored == [
        "ModelLiveQualityLow: no version label naming the version to retrain for",
        "ModelLiveQualityLow: resolved, not firing",
        "ModelLiveQualityLow: 65 labels, more than 50",
    ]
    with pytest.raises(alerts.MalformedWebhook, match="more than 500"):
        alerts.dispatches(webhook(*[quality_alert("retrain") for _ in range(501)]))


class FakeGitHub:
    """httpx transport recording dispatches; answers `status` (GitHub: 204)."""

    def __init__(self, status=204):
        self.status, self.requests = status, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json={"message": "Bad credentials"} if self.status >= 400 else None)


def relay(github, relay_token=None, clock=None):
    settings = RelaySettings("org/repo", "ghp_secret_token", "https://github.example/api/v3", relay_token, 600.0)
    return Relay(settings, transport=httpx.MockTransport(github), **({"clock": clock} if clock else {}))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_relay_dispatches_each_version_once_a_window_and_retries_only_what_failed(capsys):
    github, clock = FakeGitHub(), Clock()
    the_relay = relay(github, clock=clock)
    body = json.dumps(webhook(alert(), alert(fingerprint="f2", version="8"), alert(action=None))).encode()
    status, answer = the_relay.receive(body)
    assert status == 200 and [d["version"] for d in answer["dispatched"]] == ["7", "8"]
    [request, _] = github.requests
    assert str(request.url) == "https://github.example/api/v3/repos/org/repo/dispatches"
    assert request.headers["Authorization"] == "Bearer ghp_secret_token"
    assert json.loads(request.content)["client_payload"]["version"] == "7"
    # delivered again, or "new firings" with fresh fingerprints and start times: nothing new within the window
    status, answer = the_relay.receive(body)
    assert status == 200 and answer["dispatched"] == [] and len(answer["already_sent"]) == 2
    refired = webhook(alert(fingerprint="new", starts="2025-01-01T11:00:00Z"), alert(alertname="ChurnApiSlow"))
    assert the_relay.receive(json.dumps(refired).encode())[1]["already_sent"] == [
        "production/7/ChurnApiHigh5xxRatio", "production/7/ChurnApiSlow",
    ]  # fmt: skip
    assert len(github.requests) == 2
    # a flood naming many versions: at most MAX_VERSIONS_PER_WINDOW in all
    flood = webhook(*[alert(fingerprint=str(i), version=str(i)) for i in range(100, 400)])
    status, answer = the_relay.receive(json.dumps(flood).encode())
    assert status == 200 and len(answer["dispatched"]) == 1 and len(answer["rate_limited"]) == 299
    assert len(github.requests) == 3
    # after the window, the same version may be dispatched again (production may still serve it)
    clock.now += 601
    assert [d["version"] for d in the_relay.receive(body)[1]["dispatched"]] == ["7", "8"]
    assert len(github.requests) == 5
    # GitHub refusing is a 502 (Alertmanager retries), not remembered as sent, and never prints the token
    failing = relay(FakeGitHub(401))
    status, answer = failing.receive(body)
    assert status == 502 and "answered 401" in answer["failed"][0]["error"]
    assert failing.receive(body)[0] == 502  # tried again
    assert "ghp_secret_token" not in capsys.readouterr().err + json.dumps(answer)
    assert "ghp_secret_token" not in repr(failing.settings)


def test_the_relay_dispatches_a_quality_alert_as_a_rollback_once_a_window():
    # given the relay as Alertmanager's rollback route reaches it, and the quality alert about production's version
    github = FakeGitHub()
    the_relay = relay(github, clock=Clock())
    body = json.dumps(webhook(quality_alert())).encode()
    # when it is posted twice (Alertmanager's repeat)
    first, again = the_relay.receive(body), the_relay.receive(body)
    # then one rollback dispatch names the version and the reason; the repeat is already sent
    assert first == (200, {"dispatched": [{"alert": "production/7/ModelLiveQualityFailed", "version": "7"}],
                           "already_sent": [], "rate_limited": [], "failed": [], "ignored": []})  # fmt: skip
    assert again[1]["already_sent"] == ["production/7/ModelLiveQualityFailed"]
    [request] = github.requests
    sent = json.loads(request.content)
    assert sent["event_type"] == "rollback" and sent["client_payload"]["version"] == "7"


def test_the_relay_dispatches_retrains_once_a_window_per_environment_and_never_crowds_out_a_rollback():
    # given a relay that already rolled back three versions this window (its whole rollback budget)
    github, clock = FakeGitHub(), Clock()
    the_relay = relay(github, clock=clock)
    flood = webhook(*[alert(fingerprint=str(i), version=str(i)) for i in (7, 8, 9)])
    assert len(the_relay.receive(json.dumps(flood).encode())[1]["dispatched"]) == 3
    # when retrain alerts about two versions of production arrive, and again
    body = json.dumps(webhook(quality_alert("retrain"), quality_alert("retrain", version="9"))).encode()
    status, answer = the_relay.receive(body)
    # then one retrain is dispatched for the environment, the second is already sent, nothing is rate limited
    assert status == 200
    assert answer["dispatched"] == [{"alert": "production/retrain/ModelLiveQualityLow", "version": "7"}]
    assert answer["already_sent"] == ["production/retrain/ModelLiveQualityLow"] and answer["rate_limited"] == []
    assert json.loads(github.requests[-1].content)["event_type"] == "retrain"
    assert the_relay.receive(body)[1]["dispatched"] == [] and len(github.requests) == 4
    # and after the window, a retrain may be dispatched again
    clock.now += 601
    assert len(the_relay.receive(body)[1]["dispatched"]) == 1


def test_the_relay_hears_only_its_bearer_token():
    the_relay = relay(FakeGitHub(), relay_token="relay-token")
    assert the_relay.authorized("Bearer relay-token")
    assert not the_relay.authorized(None) and not the_relay.authorized("Bearer wrong")
    assert relay(FakeGitHub()).authorized(None)
    assert the_relay.receive(b"{}")[0] == 400


def test_relay_settings_name_what_is_missing(monkeypatch):
    from pipeline.core.errors import ConfigError

    for name in ("GITHUB_REPOSITORY", "GITHUB_TOKEN", "GITHUB_API_URL", "ALERT_RELAY_TOKEN",
                 "ALERT_RELAY_INSECURE_NO_TOKEN", "ALERT_RELAY_WINDOW_S"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="needs GITHUB_REPOSITORY and GITHUB_TOKEN"):
        RelaySettings.from_env()
    monkeypatch.setenv("GITHUB_REPOSITORY", "no-slash")
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    with pytest.raises(ConfigError, match="OWNER/NAME"):
        RelaySettings.from_env()
    monkeypatch.setenv("GITHUB_REPOSITORY", "org/repo")
    # no relay token: refused, unless the loud local-test flag says exactly so
    with pytest.raises(ConfigError, match=r"needs ALERT_RELAY_TOKEN.*rolls production back"):
        RelaySettings.from_env()
    monkeypatch.setenv("ALERT_RELAY_INSECURE_NO_TOKEN", "yes")
    with pytest.raises(ConfigError, match="needs ALERT_RELAY_TOKEN"):
        RelaySettings.from_env()
    monkeypatch.setenv("ALERT_RELAY_INSECURE_NO_TOKEN", "local-test-only")
    assert RelaySettings.from_env() == RelaySettings("org/repo", "t", "https://api.github.com", None)
    for token, message in [("change-me-relay-token-0123", "placeholder"), ("tiny-tok3n", "shorter than 16")]:
        monkeypatch.setenv("ALERT_RELAY_TOKEN", token)
        with pytest.raises(ConfigError, match=message) as caught:
            RelaySettings.from_env()
        assert token not in str(caught.value)
    monkeypatch.setenv("ALERT_RELAY_TOKEN", "a-random-token-of-32-characters!")
    monkeypatch.setenv("ALERT_RELAY_WINDOW_S", "60")
    assert RelaySettings.from_env().window_s == 60.0
    monkeypatch.setenv("ALERT_RELAY_WINDOW_S", "nan")
    with pytest.raises(ConfigError, match="ALERT_RELAY_WINDOW_S"):
        RelaySettings.from_env()
