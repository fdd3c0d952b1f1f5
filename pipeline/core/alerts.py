"""Alertmanager's webhook → GitHub `repository_dispatch` requests for the rollback and retrain workflows (pure).

Alertmanager posts a group of alerts (webhook format version 4). Each alert
that is firing and labelled `action="rollback"` becomes one dispatch of event
type `rollback`, whose client_payload the rollback workflow reads: the reason
(`<alertname>: <summary>`), the version the alert is about (its `version`
label: the workflow rolls back only while production still serves it) and the
alert's labels. A dispatch is identified by what it means (environment,
version, alert name), never by the fingerprint or start time a sender picks:
the relay dispatches a meaning once per window however often it is posted.
An alert labelled `action="retrain"` (live quality falling short) becomes a
dispatch of event type `retrain` (`dispatches`): the same checks and payload,
identified by its environment alone (`<environment>/retrain/<alertname>`), as
a retrain learns from the whole labelled log, not from one version.
Everything that reaches the workflow is plain text: versions are ASCII digits,
reasons and labels single lines of letters, digits and plain punctuation
(nothing Markdown or a shell reads), each of bounded length.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

EVENT_TYPE = "rollback"
ACTION_LABEL, ACTION = "action", "rollback"
RETRAIN = "retrain"  # both the action label's value and the event type the retrain workflow listens for
RETRAIN_TARGET = "retrain"  # the dedup key's middle part for retrains, where a rollback's has the version
MAX_REASON = 200  # the ledger entry's reason and the workflow run's title
MAX_LABEL_VALUE = 100
MAX_LABELS = 50
MAX_ALERTS = 500  # per webhook body: Alertmanager groups by alert and version, so a real group holds a few
VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit also takes "٣"
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9 .,:;%=+/@'()-]+")  # anything else (controls, Markdown, quotes) becomes a space
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


class MalformedWebhook(ValueError):
    """The body is not Alertmanager's webhook JSON."""


@dataclass(frozen=True)
class Dispatch:
    """One repository_dispatch to send: its dedup key and the request body."""

    key: str  # environment/version/alertname (a retrain: environment/retrain/alertname): what it means
    version: str
    reason: str
    labels: dict[str, str] = field(default_factory=dict)
    event_type: str = EVENT_TYPE

    def body(self) -> dict[str, Any]:
        """The JSON body of `POST /repos/{owner}/{repo}/dispatches`."""
        return {
            "event_type": self.event_type,
            "client_payload": {"reason": self.reason, "version": self.version, "alert": dict(self.labels)},
        }


@dataclass(frozen=True)
class Decision:
    """What a webhook asks for: the dispatches, and each alert passed over with why."""

    dispatches: list[Dispatch]
    ignored: list[str]


def parse_webhook(body: bytes) -> dict[str, Any]:
    """The webhook's JSON object; MalformedWebhook naming what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedWebhook(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("alerts"), list):
        raise MalformedWebhook("not an Alertmanager webhook: no `alerts` list")
    return document


def _text_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise MalformedWebhook(f"{what} must map names to strings")
    return dict(value)


def plain(text: str, limit: int) -> str:
    """`text` as one line of letters, digits and plain punctuation, at most `limit` characters."""
    line = " ".join(_NOT_PLAIN.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def plain_labels(labels: dict[str, str]) -> dict[str, str]:
    """Label names as Prometheus names ([A-Za-z0-9_]), values as plain bounded text."""
    return {_NOT_NAME.sub("_", name)[:MAX_LABEL_VALUE]: plain(value, MAX_LABEL_VALUE) for name, value in labels.items()}


def rollback_dispatches(webhook: dict[str, Any]) -> Decision:
    """The dispatches a webhook asks for: firing alerts labelled action="rollback" that name a version."""
    return _decide(webhook, (ACTION,))


def dispatches(webhook: dict[str, Any]) -> Decision:
    """Rollbacks as `rollback_dispatches`, and retrains for firing alerts labelled action="retrain".

    A retrain alert names a version too (the one whose quality fell short), checked like a rollback's:
    the workflow run's title and the ledger show it.
    """
    return _decide(webhook, (ACTION, RETRAIN))


def _decide(webhook: dict[str, Any], actions: tuple[str, ...]) -> Decision:
    """Firing alerts whose action label is one of `actions`, with a version, as dispatches; the rest, with why."""
    dispatches: list[Dispatch] = []
    ignored: list[str] = []
    wanted = " or ".join(f"{ACTION_LABEL}={action}" for action in actions)
    if len(webhook["alerts"]) > MAX_ALERTS:
        raise MalformedWebhook(f"{len(webhook['alerts'])} alerts in one body, more than {MAX_ALERTS}")
    for index, alert in enumerate(webhook["alerts"]):
        if not isinstance(alert, dict):
            raise MalformedWebhook(f"alerts[{index}] is not an object")
        labels = _text_map(alert.get("labels"), f"alerts[{index}].labels")
        annotations = _text_map(alert.get("annotations"), f"alerts[{index}].annotations")
        name = plain(labels.get("alertname", "") or f"alerts[{index}]", MAX_LABEL_VALUE)
        action = labels.get(ACTION_LABEL)
        if alert.get("status") != "firing":
            ignored.append(f"{name}: {alert.get('status', 'no status')}, not firing")
        elif action not in actions:
            ignored.append(f"{name}: not labelled {wanted}")
        elif not VERSION.fullmatch(labels.get("version", "")):
            what = "roll back from" if action == ACTION else "retrain for"
            ignored.append(f"{name}: no version label naming the version to {what}")
        elif len(labels) > MAX_LABELS:
            ignored.append(f"{name}: {len(labels)} labels, more than {MAX_LABELS}")
        else:
            summary = annotations.get("summary", "")
            reason = plain(f"{name}: {summary}" if summary.strip() else name, MAX_REASON)
            version, environment = labels["version"], plain(labels.get("environment", ""), MAX_LABEL_VALUE)
            target = version if action == ACTION else RETRAIN_TARGET
            key = f"{environment or '-'}/{target}/{name}"
            event_type = EVENT_TYPE if action == ACTION else RETRAIN
            dispatches.append(Dispatch(key, version, reason, plain_labels(labels), event_type))
    return Decision(dispatches, ignored)
