"""How replicas split traffic between production and a canary: the state a rollout writes, and the split it makes.

A rollout (pipeline/stages/rollout.py) writes each step's mode and weight as
registered-model tags (`Traffic.tags`), signed over `Traffic.statement`: the
state and what binds it to its rollout (`Rollout`). Every replica reads them
on each poll (api/release/traffic_reading.py, which refuses a state it cannot
trust), so all agree within one poll. `Traffic.to_canary` is the split: a
customer's keyed bucket, the same for the whole rollout; no customer, a draw.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api.release import contract
from api.release.verdicts import Verdict

MODES = ("off", "shadow", "canary")
BUCKETS = 10_000  # a customer's bucket: 0..9999; the canary takes those below weight * 100
# The side of a request without customer ids: a draw of the process's generator (seeded from the OS). A client
# sees one bit of a draw at most, interleaved with the service's other draws: nothing it can aim with.
_draw = random.random
CACHED_CUSTOMERS = 65_536  # buckets remembered per traffic state (a hash costs microseconds); past it, forgotten


def salt_key(salt: str) -> bytes:
    """The BLAKE2b key of a salt: its bytes when hex (as rollouts write it), else its text; at most 64 bytes."""
    try:
        key = bytes.fromhex(salt)
    except ValueError:
        key = salt.encode()
    return key if len(key) <= hashlib.blake2b.MAX_KEY_SIZE else hashlib.blake2b(key).digest()


@dataclass(frozen=True)
class Rollout:
    """What binds a traffic state to one rollout: its id, when it started, and the ledger entry that started it."""

    id: str  # random, drawn when the rollout starts
    started: str  # ISO 8601, UTC
    entry: str  # the tag key of the ledger entry that started it
    entry_hash: str  # the sha256 of that entry's stored text


@dataclass(frozen=True)
class Traffic:
    """Where requests go: all to production (off), production plus a shadow copy, or a weighted canary."""

    mode: str = "off"
    version: str | None = None  # the canary version
    weight: int = 0  # percent of requests the canary answers (canary mode)
    shadow_share: float = 0.0  # share of production's requests copied to the canary (shadow mode)
    problem: str | None = None  # why a state in the registry was read as off
    salt: str = field(default="", repr=False)  # the split's secret key for this rollout (hex): never shown
    rollout: Rollout | None = None  # the rollout the state belongs to
    expires: str = ""  # ISO 8601, UTC: past it, the state is read as off
    refused: str | None = None  # the kind of `problem`: one of REFUSALS
    _key: bytes = field(init=False, repr=False, compare=False, default=b"")
    _buckets: dict[str, int] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", salt_key(self.salt))  # once per state, not per request

    def bucket(self, customer: object) -> int:
        """The customer's bucket in 0..9999: a keyed hash of its id, the same for the whole rollout."""
        text = str(customer)
        found = self._buckets.get(text)
        if found is None:
            digest = hashlib.blake2b(text.encode(), key=self._key, digest_size=8).digest()
            found = int.from_bytes(digest, "big") % BUCKETS
            if len(self._buckets) >= CACHED_CUSTOMERS:
                self._buckets.clear()
            self._buckets[text] = found
        return found

    def to_canary(self, customers: Sequence[object] | None) -> bool:
        """Whether the canary answers a request whose records name these customers (None: records name none).

        Each customer's bucket is compared with the weight: as the weight grows,
        a customer moves to the canary once and stays. The request goes to the
        canary only when every customer it names is on the canary's side; a
        customer on production's side keeps the whole request there. Without a
        customer id (none configured, or a record without one) the side is a
        random draw per request.
        """
        if self.mode != "canary" or self.weight <= 0:
            return False
        if self.weight >= 100:
            return True
        below = self.weight * (BUCKETS // 100)
        if not customers:
            return _draw() * BUCKETS < below
        anonymous = False
        for customer in customers:
            if customer is None:
                anonymous = True
            elif self.bucket(customer) >= below:
                return False  # one record's customer is production's: the whole request is
        return _draw() * BUCKETS < below if anonymous else True

    def statement(self) -> str:
        """The state and what binds it to its rollout, as canonical JSON: what the signature covers."""
        rollout = self.rollout or Rollout("", "", "", "")
        fields = {
            "mode": self.mode,
            "weight": self.weight,
            "shadow_share": f"{self.shadow_share:g}",
            "salt": self.salt,  # it decides who goes where
            "rollout": rollout.id,
            "started": rollout.started,
            "ledger_entry": rollout.entry,
            "ledger_hash": rollout.entry_hash,
            "expires": self.expires,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def verdict(self, model: str) -> Verdict:
        """The statement a traffic state's signature covers: model, version, and the state with its binding."""
        return Verdict("traffic", model, self.version or "", "", "", self.statement(), "")

    def tags(self) -> dict[str, str]:
        """The registered-model tags that say this state (its signature comes beside them)."""
        rollout = self.rollout or Rollout("", "", "", "")
        return {
            contract.CANARY_MODE: self.mode,
            contract.CANARY_VERSION: self.version or "",
            contract.CANARY_WEIGHT: str(self.weight),
            contract.CANARY_SHADOW_SHARE: f"{self.shadow_share:g}",
            contract.CANARY_SALT: self.salt,
            contract.CANARY_ROLLOUT: rollout.id,
            contract.CANARY_STARTED: rollout.started,
            contract.CANARY_LEDGER_ENTRY: rollout.entry,
            contract.CANARY_LEDGER_HASH: rollout.entry_hash,
            contract.CANARY_EXPIRES: self.expires,
        }

    def describe(self) -> dict[str, Any]:
        """The state as /model shows it to the operator (never the salt)."""
        rollout = self.rollout
        return {
            "mode": self.mode,
            "weight": self.weight,
            "shadow_share": self.shadow_share,
            "rollout": rollout.id if rollout else None,
            "started": rollout.started if rollout else None,
            "expires": self.expires or None,
        }


OFF = Traffic()


@dataclass(frozen=True)
class Target:
    """What a replica should serve now: production's version, and the canary's with its traffic during a rollout."""

    production: str
    canary: str | None = None
    traffic: Traffic = OFF
