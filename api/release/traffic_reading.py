"""The canary state as a replica reads it from the registry: checked, never trusted blindly (the split: traffic.py).

A rollout (pipeline/stages/rollout.py) points the canary alias at a version
with a ledger entry that names a fresh rollout id, then writes each step's
mode and weight as registered-model tags under the release lock, signed with
the release key over the state and what binds it to that rollout: its id,
when it started, the ledger entry that started it (tag key and hash) and an
expiry. Every replica reads them on each poll, so all agree within one poll.

A replica reads as "off" (and says why: `refused`, one of REFUSALS) a state
that is malformed, names another version than the canary alias, does not
verify (with a verify key), is past its expiry, whose rollout has ended in
the ledger (a later entry naming its id, or a later move of the canary alias),
or whose start entry is missing, changed, not accepted, or followed by edits.
Without a verify key anyone with registry write access can write a state, so
an unsigned state may only shadow: a canary weight without a verify key is
read as off, and no customer is answered by an unverified canary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.release import contract
from api.release.ledger import read_ledger, text_hash
from api.release.traffic import MODES, OFF, Rollout, Traffic
from api.release.verdicts import verifies

# Why a state was read as off: its tags do not parse, it names another version, it does not verify, it is a canary
# weight with no key to verify it, it is past its expiry, its rollout ended, or the ledger does not back it.
REFUSALS = ("malformed", "version", "signature", "unsigned_canary", "expired", "ended", "ledger")
VERIFIED_NOTE = (
    "canary states are verified with RELEASE_VERIFY_KEY: one counts only if signed, unexpired, "
    "and bound to a rollout the ledger shows still running"
)
UNSIGNED_NOTE = (
    "UNSIGNED: no RELEASE_VERIFY_KEY, so anyone with write access to the model registry steers traffic; "
    "an unsigned canary state may only shadow (no customer is answered by the canary)"
)
log = logging.getLogger("api")


def read_traffic(
    tags: Mapping[str, str],
    canary: str | None,
    model: str,
    verify_key: Ed25519PublicKey | None,
    *,
    canary_alias: str = "canary",
    now: float | None = None,
) -> Traffic:
    """The traffic state the registry holds for the version the canary alias points at; never raises.

    `tags` are the registered model's (the ledger's entries among them);
    `now` is a Unix time (default: this clock's).
    """
    mode = tags.get(contract.CANARY_MODE, "off")
    if mode == "off" or canary is None:
        return OFF
    try:
        traffic = _parse(tags, mode)
    except (ValueError, TypeError):
        return _refuse("malformed", "the canary's weight or shadow share is not a number")
    if mode not in MODES or not 0 <= traffic.weight <= 100 or not 0 <= traffic.shadow_share <= 1:
        why = f"the canary state {mode}:{traffic.weight}:{traffic.shadow_share:g} is not valid"
        return _refuse("malformed", why, traffic)
    if traffic.version != canary:
        why = f"the canary state is about version {traffic.version}, the alias points at {canary}"
        return _refuse("version", why, traffic)
    if verify_key is not None and not verifies(verify_key, traffic.verdict(model), tags.get(contract.CANARY_SIGNATURE)):
        return _refuse("signature", "the canary state is not signed by the release key", traffic)
    if verify_key is None and mode == "canary" and traffic.weight > 0:
        why = (
            f"a canary weight ({traffic.weight} %) is honoured only with RELEASE_VERIFY_KEY: unsigned, anyone with "
            "registry write access could have written it (unsigned states may only shadow)"
        )
        return _refuse("unsigned_canary", why, traffic)
    problem = binding_problem(traffic, tags, model, verify_key, canary_alias, time.time() if now is None else now)
    return traffic if problem is None else _refuse(*problem, traffic)


def binding_problem(
    traffic: Traffic,
    tags: Mapping[str, str],
    model: str,
    verify_key: Ed25519PublicKey | None,
    canary_alias: str,
    now: float,
) -> tuple[str, str] | None:
    """(kind, why) when the state does not belong to a running rollout the ledger backs; None when it does.

    Pure. The state must name its rollout and be unexpired; the ledger entry it
    names must be there with the recorded hash, accepted (signed, with a verify
    key), and be the start of that rollout on the canary alias for this version;
    no accepted entry after it may name the rollout (its end) or move the canary
    alias, and no entry after it may be an anomaly (edited, forged, unchained).
    """
    rollout = traffic.rollout
    if rollout is None or not (rollout.id and rollout.entry and rollout.entry_hash and traffic.expires):
        return "malformed", "the canary state names no rollout (id, ledger entry, expiry): written by hand, or old"
    try:
        expires, _ = _instant(traffic.expires), _instant(rollout.started)
    except ValueError:
        return "malformed", f"the times of rollout {rollout.id}'s canary state are not ISO 8601 with a time zone"
    if now >= expires:
        return "expired", f"the canary state of rollout {rollout.id} expired at {traffic.expires}"
    return _ledger_problem(traffic, rollout, tags, model, verify_key, canary_alias)


def _ledger_problem(
    traffic: Traffic,
    rollout: Rollout,
    tags: Mapping[str, str],
    model: str,
    verify_key: Ed25519PublicKey | None,
    alias: str,
) -> tuple[str, str] | None:
    text = tags.get(rollout.entry)
    if text is None or text_hash(text) != rollout.entry_hash:
        return "ledger", f"the ledger entry that started rollout {rollout.id} ({rollout.entry}) is missing or changed"
    ledger = read_ledger(model, dict(tags), verify_key, since=rollout.entry)  # the entries before do not matter
    start = next((entry for entry in ledger.entries if entry["key"] == rollout.entry), None)
    if start is None:
        return "ledger", f"the ledger entry that started rollout {rollout.id} is not accepted (unsigned or forged)"
    if (start.get("rollout"), start.get("alias"), start.get("to")) != (rollout.id, alias, traffic.version):
        return "ledger", f"{rollout.entry} is not the start of rollout {rollout.id} of {traffic.version} on @{alias}"
    for entry in ledger.entries:
        if entry["key"] > rollout.entry and entry.get("rollout") == rollout.id:
            return "ended", f"rollout {rollout.id} ended at {entry['at']}: {entry['reason']}"
        if entry["key"] > rollout.entry and entry.get("alias") == alias:
            return "ended", f"@{alias} moved at {entry['at']}, after rollout {rollout.id} began: {entry['reason']}"
    edits = [anomaly for anomaly in ledger.anomalies if (anomaly["key"] or "") > rollout.entry]
    if edits:
        return "ledger", f"the ledger was edited after rollout {rollout.id} started: {edits[0]['detail']}"
    return None


class TrafficReader:
    """One replica's reading of the canary state on every poll: what it refused, counted, shown and logged once."""

    def __init__(self, model: str, canary_alias: str, verify_key: Ed25519PublicKey | None) -> None:
        self.model, self.canary_alias, self.verify_key = model, canary_alias, verify_key
        self.refused: dict[str, Any] | None = None  # the state refused on the last poll, and why
        self.refusals: dict[str, int] = {}  # refused states by kind (each distinct state once)
        if verify_key is None:
            log.warning("canary traffic: %s", UNSIGNED_NOTE)

    @property
    def control(self) -> str:
        """Who steers traffic: signed states only, or anyone with registry write access (said plainly)."""
        return VERIFIED_NOTE if self.verify_key is not None else UNSIGNED_NOTE

    def read(self, tags: Mapping[str, str], canary: str | None, now: float | None = None) -> Traffic:
        """The state to route by; a refused one is remembered, counted once and logged once."""
        traffic = read_traffic(tags, canary, self.model, self.verify_key, canary_alias=self.canary_alias, now=now)
        if traffic.refused is None:
            self.refused = None
            return traffic
        if self.refused is None or self.refused["reason"] != traffic.problem:
            self.refusals[traffic.refused] = self.refusals.get(traffic.refused, 0) + 1
            self.refused = {
                "kind": traffic.refused,
                "reason": traffic.problem,
                "version": traffic.version,
                "rollout": traffic.rollout.id if traffic.rollout else None,
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            log.warning(
                "canary state refused (%s), production answers everything: %s", traffic.refused, traffic.problem
            )
        return traffic

    def report(self) -> dict[str, Any]:
        """What /model shows the operator: who steers traffic, the state refused now, and refusals so far."""
        return {"control": self.control, "refused": self.refused, "refusals": dict(self.refusals)}


def _parse(tags: Mapping[str, str], mode: str) -> Traffic:
    rollout = Rollout(
        tags.get(contract.CANARY_ROLLOUT, ""),
        tags.get(contract.CANARY_STARTED, ""),
        tags.get(contract.CANARY_LEDGER_ENTRY, ""),
        tags.get(contract.CANARY_LEDGER_HASH, ""),
    )
    return Traffic(
        mode,
        tags.get(contract.CANARY_VERSION) or None,
        int(tags.get(contract.CANARY_WEIGHT, "0")),
        float(tags.get(contract.CANARY_SHADOW_SHARE, "0")),
        salt=tags.get(contract.CANARY_SALT, ""),
        rollout=rollout if any(vars(rollout).values()) else None,
        expires=tags.get(contract.CANARY_EXPIRES, ""),
    )


def _refuse(kind: str, why: str, state: Traffic | None = None) -> Traffic:
    """Off, saying why, and which version and rollout the refused state named."""
    return Traffic(
        version=state.version if state else None,
        problem=why,
        rollout=state.rollout if state else None,
        refused=kind,
    )


def _instant(text: str) -> float:
    """The Unix time of an ISO 8601 instant with a time zone; ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.timestamp()
