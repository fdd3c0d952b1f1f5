"""deploy/alertmanager: a config that sends production's rollback and retrain alerts to the relay, all to people."""

from __future__ import annotations

import pytest

from .tools import DEPLOY, alerting_rules, load_yaml, run, system_tool

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
RELAY_URL = "http://rollback-relay:9095/alert"


def amtool() -> str:
    """Return amtool, from Debian's prometheus-alertmanager package."""
    return system_tool("amtool", "prometheus-alertmanager")


def receivers(labels: dict[str, str]) -> list[str]:
    """Return the receivers Alertmanager's routing tree picks for an alert with these labels."""
    pairs = [f"{name}={value}" for name, value in labels.items()]
    result = run([amtool(), "config", "routes", "test", f"--config.file={CONFIG}", *pairs])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().split(",")


def test_amtool_checks_the_config() -> None:
    """Alertmanager 0.25 accepts the file (routes, receivers, inhibitions)."""
    result = run([amtool(), "check-config", str(CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_reaches_people_and_production_rollbacks_reach_the_relay(rule: dict) -> None:
    """action=rollback or retrain in production goes to the relay and to people; everything else to people only."""
    labels = {"alertname": rule["alert"], **rule["labels"], "version": "7"}
    wants_relay = rule["labels"].get("action") in {"rollback", "retrain"}
    production = receivers({**labels, "environment": "production"})
    assert production == (["rollback-relay", "default"] if wants_relay else ["default"])
    assert receivers({**labels, "environment": "staging"}) == ["default"]


def test_relay_gets_firing_alerts_only_with_its_bearer_token() -> None:
    """The relay's webhook: its address, no resolved notifications, and the relay's token read from a secret file."""
    (relay,) = [receiver for receiver in load_yaml(CONFIG)["receivers"] if receiver["name"] == "rollback-relay"]
    (webhook,) = relay["webhook_configs"]
    assert webhook == {
        "url": RELAY_URL,
        "send_resolved": False,
        "http_config": {"authorization": {"type": "Bearer", "credentials_file": "/run/secrets/alert-relay-token"}},
    }
