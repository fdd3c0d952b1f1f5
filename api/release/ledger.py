"""The release ledger: one registered-model tag per alias move, chained and signed.

Pure: entries are made and read here from plain values; the registry adapter
(pipeline/store/alias_moves.py) writes the tags, and both the pipeline and the
replicas (api/release/traffic_reading.py, which binds a canary state to the entry that
started its rollout) read them. Each entry records the
sha256 of the previous entry's stored text (`prev`), so an edited or removed
entry breaks the chain at the next one; with a signing key each entry is
signed (Ed25519) over the model, its tag key and its content, so a forged one
does not verify. Reading never raises: a malformed, unchained, unsigned or
forged entry is an anomaly, listed with what is wrong, and left out of the
history that explains where the aliases point.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from api.release.contract import HISTORY_PREFIX

REQUIRED = {"alias": str, "to": str, "at": str, "reason": str}
OPTIONAL_TEXT = ("by", "git_sha", "image", "kind", "prev", "rollout", "signature")  # rollout: its id (kind rollout)


@dataclass(frozen=True)
class Ledger:
    """A model's ledger as read: the accepted moves, the anomalies, and the newest tag to chain to."""

    entries: list[dict[str, Any]]  # the accepted moves, oldest first
    anomalies: list[dict[str, str | None]] = field(default_factory=list)
    last_key: str | None = None  # the newest tag, accepted or not: the next entry chains to it
    last_text: str | None = None


def entry_key(last_key: str | None, now_ns: int, suffix: str) -> str:
    """The tag key of a new entry: after every existing one even if this clock is behind the last writer's."""
    last = int(last_key.removeprefix(HISTORY_PREFIX).split(".")[0]) if last_key else 0
    return f"{HISTORY_PREFIX}{max(now_ns, last + 1):020d}.{suffix}"


def text_hash(text: str) -> str:
    """The sha256 of a stored entry's text (the next entry's `prev`)."""
    return hashlib.sha256(text.encode()).hexdigest()


def signed_payload(model: str, key: str, entry: dict[str, Any]) -> bytes:
    """The canonical bytes an entry's signature covers: the model, the tag key and the entry without its signature."""
    body = {k: v for k, v in entry.items() if k != "signature"}
    return json.dumps({"ledger": model, "key": key, "entry": body}, sort_keys=True, separators=(",", ":")).encode()


def make_entry(
    model: str, key: str, move: dict[str, Any], previous_text: str | None, signing_key: Ed25519PrivateKey | None = None
) -> str:
    """The tag value of a move: its fields, the hash of the previous entry, and a signature when a key is given."""
    entry = {**move, "prev": text_hash(previous_text) if previous_text is not None else ""}
    if signing_key is not None:
        entry["signature"] = base64.b64encode(signing_key.sign(signed_payload(model, key, entry))).decode()
    return json.dumps(entry, sort_keys=True)


def read_ledger(
    model: str, tags: dict[str, str], verify_key: Ed25519PublicKey | None = None, since: str | None = None
) -> Ledger:
    """The accepted entries and the anomalies of a registered model's ledger tags; never raises.

    `since` reads only the entries from that key on, the first one's link to
    the entry before it unchecked: for a reader that pins that entry by its
    hash (a replica, its rollout's start entry) and need not verify the rest.
    """
    entries: list[dict[str, Any]] = []
    anomalies: list[dict[str, str | None]] = []
    previous: str | None = None
    chained = False
    keys = sorted(k for k in tags if k.startswith(HISTORY_PREFIX) and (since is None or k >= since))
    for key in keys:
        text, expected_prev = tags[key], text_hash(previous) if previous is not None else ""
        pinned = since is not None and previous is None  # the first entry read after `since`: its hash is pinned
        previous = text
        entry, problem = _parse(text)
        if problem:
            anomalies.append(_anomaly("malformed_entry", key, entry, f"ledger entry {key} is malformed: {problem}"))
            continue
        if "prev" in entry:
            chained = True
            if entry["prev"] != expected_prev and not pinned:
                anomalies.append(
                    _anomaly("broken_chain", key, entry, f"the ledger entry before {key} was edited or removed")
                )
        elif chained:
            anomalies.append(
                _anomaly("unchained_entry", key, entry, f"ledger entry {key} was not written in the chain")
            )
            continue
        if verify_key is not None and chained:
            why = _signature_problem(model, key, entry, verify_key)
            if why:
                anomalies.append(_anomaly(why[0], key, entry, f"ledger entry {key} {why[1]}"))
                continue
        entries.append({**entry, "key": key})
    return Ledger(entries, anomalies, keys[-1] if keys else None, previous)


def is_rollback(move: dict[str, Any]) -> bool:
    """A move made by rollback (entries from before `kind` existed say so in their reason)."""
    return move.get("kind") == "rollback" or (not move.get("kind") and move.get("reason", "").startswith("rollback:"))


def _parse(text: str) -> tuple[dict[str, Any], str | None]:
    try:
        entry = json.loads(text)
    except ValueError:
        return {}, "not JSON"
    if not isinstance(entry, dict):
        return {}, f"a JSON {type(entry).__name__}, not an object"
    for name, kind in REQUIRED.items():
        if not isinstance(entry.get(name), kind):
            return entry, f"{name!r} missing or not text"
    if "from" not in entry or not (entry["from"] is None or isinstance(entry["from"], str)):
        return entry, "'from' missing or not text"
    for name in OPTIONAL_TEXT:
        if name in entry and not isinstance(entry[name], str):
            return entry, f"{name!r} is not text"
    return entry, None


def _signature_problem(
    model: str, key: str, entry: dict[str, Any], verify_key: Ed25519PublicKey
) -> tuple[str, str] | None:
    signature = entry.get("signature")
    if not signature:
        return "unsigned_entry", "is not signed, and a release key is set"
    try:
        verify_key.verify(base64.b64decode(signature, validate=True), signed_payload(model, key, entry))
    except (InvalidSignature, ValueError):
        return "forged_entry", "is not signed by the release key (forged or edited)"
    return None


def _anomaly(kind: str, key: str, entry: dict[str, Any], detail: str) -> dict[str, str | None]:
    alias = entry.get("alias") if isinstance(entry.get("alias"), str) else None
    version = entry.get("to") if isinstance(entry.get("to"), str) else None
    return {"alias": alias, "version": version, "kind": kind, "key": key, "detail": detail}
