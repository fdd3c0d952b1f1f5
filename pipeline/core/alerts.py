"""Alertmanager's webhook → GitHub `repository_dispatch` requests for the rollback workflow (pure).

Alertmanager posts a group of alerts (webhook format version 4). Each alert
that is firing and labelled `action="rollback"` becomes one dispatch of event
type `rollback`, whose client_payload the rollback workflow reads: the reason
(`<alertname>: <summary>`), the version the alert is about (its `version`
label: the workflow rolls back only while production still serves it) and the
alert's labels. An alert is identified by its fingerprint and start time: the
same alert delivered again (Alertmanager's repeat, a retry) has the same key,
a new firing of it a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

EVENT_TYPE = "rollback"
ACTION_LABEL, ACTION = "action", "rollback"
MAX_REASON = 500  # the ledger entry's reason; an annotation can be long
MAX_LABELS = 50


class MalformedWebhook(ValueError):
    """The body is not Alertmanager's webhook JSON."""


@dataclass(frozen=True)
class Dispatch:
    """One repository_dispatch to send: its dedup key and the request body."""

    key: str  # fingerprint@startsAt
    version: str
    reason: str
    labels: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body of `POST /repos/{owner}/{repo}/dispatches`."""
        return {
            "event_type": EVENT_TYPE,
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


def alert_key(alert: dict[str, Any], labels: dict[str, str]) -> str:
    """Fingerprint@startsAt (the fingerprint computed from the labels when Alertmanager sent none)."""
    fingerprint = alert.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    return f"{fingerprint}@{alert.get('startsAt', '')}"


def rollback_dispatches(webhook: dict[str, Any]) -> Decision:
    """The dispatches a webhook asks for: firing alerts labelled action="rollback" that name a version."""
    dispatches: list[Dispatch] = []
    ignored: list[str] = []
    for index, alert in enumerate(webhook["alerts"]):
        if not isinstance(alert, dict):
            raise MalformedWebhook(f"alerts[{index}] is not an object")
        labels = _text_map(alert.get("labels"), f"alerts[{index}].labels")
        annotations = _text_map(alert.get("annotations"), f"alerts[{index}].annotations")
        name = labels.get("alertname", f"alerts[{index}]")
        if alert.get("status") != "firing":
            ignored.append(f"{name}: {alert.get('status', 'no status')}, not firing")
        elif labels.get(ACTION_LABEL) != ACTION:
            ignored.append(f"{name}: not labelled {ACTION_LABEL}={ACTION}")
        elif not labels.get("version", "").isdigit():
            ignored.append(f"{name}: no version label naming the version to roll back from")
        elif len(labels) > MAX_LABELS:
            ignored.append(f"{name}: {len(labels)} labels, more than {MAX_LABELS}")
        else:
            summary = " ".join(annotations.get("summary", "").split())
            reason = f"{name}: {summary}" if summary else name
            if len(reason) > MAX_REASON:
                reason = reason[: MAX_REASON - 1] + "…"
            dispatches.append(Dispatch(alert_key(alert, labels), labels["version"], reason, labels))
    return Decision(dispatches, ignored)
