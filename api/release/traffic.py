"""How replicas split traffic between production and a canary: read from the registry, checked, never trusted blindly.

A rollout (pipeline/stages/rollout.py) points the canary alias at a version
and writes its mode and weight as registered-model tags under the release
lock, signed with the release key. Every replica reads them on each poll, so
all agree within one poll. A state that is malformed, that names another
version than the canary alias, or whose signature does not verify (with a
verify key) is read as "off": production answers everything.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.release import contract
from api.release.verdicts import Verdict, verifies

MODES = ("off", "shadow", "canary")


@dataclass(frozen=True)
class Traffic:
    """Where requests go: all to production (off), production plus a shadow copy, or a weighted canary."""

    mode: str = "off"
    version: str | None = None  # the canary version
    weight: int = 0  # percent of requests the canary answers (canary mode)
    shadow_share: float = 0.0  # share of production's requests copied to the canary (shadow mode)
    problem: str | None = None  # why a state in the registry was read as off

    def to_canary(self, key: object | None) -> bool:
        """Whether the canary answers a request whose customer (or request id) is `key`: the same key, the same side.

        A key is hashed into 0..99.99, and the canary takes the keys below its
        weight: as the weight grows, a customer moves to the canary once and
        stays. Without a key the choice is random.
        """
        if self.mode != "canary" or self.weight <= 0:
            return False
        bucket = random.random() * 100 if key is None else zlib.crc32(str(key).encode()) % 10_000 / 100
        return bucket < self.weight

    def verdict(self, model: str) -> Verdict:
        """The statement a traffic state's signature covers."""
        state = f"{self.mode}:{self.weight}:{self.shadow_share:g}"
        return Verdict("traffic", model, self.version or "", "", "", state, "")

    def tags(self) -> dict[str, str]:
        """The registered-model tags that say this state (its signature comes beside them)."""
        return {
            contract.CANARY_MODE: self.mode,
            contract.CANARY_VERSION: self.version or "",
            contract.CANARY_WEIGHT: str(self.weight),
            contract.CANARY_SHADOW_SHARE: f"{self.shadow_share:g}",
        }


OFF = Traffic()


@dataclass(frozen=True)
class Target:
    """What a replica should serve now: production's version, and the canary's with its traffic during a rollout."""

    production: str
    canary: str | None = None
    traffic: Traffic = OFF


def read_traffic(
    tags: Mapping[str, str], canary: str | None, model: str, verify_key: Ed25519PublicKey | None
) -> Traffic:
    """The traffic state the registry holds for the version the canary alias points at; never raises."""
    mode = tags.get(contract.CANARY_MODE, "off")
    if mode == "off" or canary is None:
        return OFF
    try:
        traffic = Traffic(
            mode,
            tags.get(contract.CANARY_VERSION) or None,
            int(tags.get(contract.CANARY_WEIGHT, "0")),
            float(tags.get(contract.CANARY_SHADOW_SHARE, "0")),
        )
    except ValueError:
        return Traffic(problem="the canary's weight or shadow share is not a number")
    if mode not in MODES or not 0 <= traffic.weight <= 100 or not 0 <= traffic.shadow_share <= 1:
        return Traffic(problem=f"the canary state {mode}:{traffic.weight}:{traffic.shadow_share:g} is not valid")
    if traffic.version != canary:
        return Traffic(problem=f"the canary state is about version {traffic.version}, the alias points at {canary}")
    signature = tags.get(contract.CANARY_SIGNATURE)
    if verify_key is not None and not verifies(verify_key, traffic.verdict(model), signature):
        return Traffic(problem="the canary state is not signed by the release key")
    return traffic
