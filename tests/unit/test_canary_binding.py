"""A canary state belongs to one rollout: replicas refuse it expired, ended, unbacked by the ledger, or unsigned.

Pure: registered-model tags built as the registry adapter writes them (ledger
entries chained and signed, the state signed over its binding), read as a
replica reads them. The same cases against a real tracking store and real
replicas: tests/integration/test_rollout_live.py.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.release import contract
from api.release.ledger import entry_key, make_entry, text_hash
from api.release.traffic import Rollout, Traffic
from api.release.traffic_reading import TrafficReader, read_traffic

MODEL = "churn"
KEY = Ed25519PrivateKey.generate()
NOW = time.time()


def at(seconds: float) -> str:
    """An ISO 8601 instant `seconds` from NOW."""
    return datetime.fromtimestamp(NOW + seconds, UTC).isoformat(timespec="seconds")


def entry(tags: dict[str, str], move: dict, key: Ed25519PrivateKey | None = KEY) -> str:
    """Append a ledger entry chained to the last one, as the registry adapter does; its tag key."""
    last = max((k for k in tags if k.startswith(contract.HISTORY_PREFIX)), default=None)
    name = entry_key(last, int(NOW * 1e9) + len(tags), "aa")
    tags[name] = make_entry(MODEL, name, move, tags.get(last) if last else None, key)
    return name


def move(alias: str, before: str | None, to: str, rollout: str = "", kind: str = "rollout") -> dict:
    out = {"alias": alias, "from": before, "to": to, "at": at(0), "reason": f"{kind}: test", "by": "ci",
           "git_sha": "abc", "image": "", "kind": kind}  # fmt: skip
    return {**out, "rollout": rollout} if rollout else out


def state(tags: dict[str, str], traffic: Traffic, key: Ed25519PrivateKey | None = KEY) -> dict[str, str]:
    """The state's tags, signed as set_traffic signs them, written over `tags`."""
    signature = base64.b64encode(key.sign(traffic.verdict(MODEL).payload())).decode() if key else ""
    tags.update({**traffic.tags(), contract.CANARY_SIGNATURE: signature})
    return tags


def started(version: str = "2", rollout: str = "r1", key: Ed25519PrivateKey | None = KEY) -> tuple[dict, Rollout]:
    """Production 1, then a rollout of `version` started on @canary: the ledger tags and the state's binding."""
    tags: dict[str, str] = {}
    entry(tags, move("production", None, "1", kind="promote"), key)
    start = entry(tags, move("canary", None, version, rollout), key)
    return tags, Rollout(rollout, at(0), start, text_hash(tags[start]))


def bound(mode: str = "canary", weight: int = 50, expires_in: float = 600, key=KEY, **kw) -> tuple[dict, Traffic]:
    """A running rollout's state, written and signed as rollout writes it: (tags, the state)."""
    tags, rollout = started(key=key, **kw)
    share = 0.5 if mode == "shadow" else 0.0
    traffic = Traffic(mode, "2", weight, share, salt="ab" * 16, rollout=rollout, expires=at(expires_in))
    return state(tags, traffic, key), traffic


def read(tags: dict[str, str], key=KEY, now: float = NOW) -> Traffic:
    return read_traffic(tags, "2", MODEL, key.public_key() if key else None, now=now)


def test_a_signed_state_of_a_running_rollout_reads_back_as_written():
    tags, traffic = bound()
    assert read(tags) == traffic and traffic.to_canary(None) in (True, False)
    assert read(tags).refused is None


def test_a_state_past_its_expiry_is_off():
    tags, _ = bound(expires_in=60)
    late = read(tags, now=NOW + 61)
    assert late.mode == "off" and late.refused == "expired" and "expired at" in (late.problem or "")
    assert read(tags, now=NOW + 59).mode == "canary"


def test_the_replay_of_an_aborted_rollouts_state_is_off():
    # given: a rollout of 2 at its 50 % step, its tags copied; then it aborted (state off, alias removed, end entry)
    tags, traffic = bound()
    copied = {k: v for k, v in tags.items() if k.startswith("canary.")}
    state(tags, Traffic())
    entry(tags, {**move("canary", "2", "", traffic.rollout.id), "reason": "rollout ended: aborted"})
    # when: someone with registry write access but no key writes the copied tags back (and re-points @canary)
    tags.update(copied)
    # then: the signature verifies, but the rollout ended in the ledger
    replayed = read(tags)
    assert replayed.mode == "off" and replayed.refused == "ended" and "aborted" in (replayed.problem or "")


def test_a_later_move_of_the_canary_alias_ends_the_rollout_for_its_states():
    tags, _ = bound()
    entry(tags, move("canary", "2", "3", "r2"))  # another rollout took @canary (its start entry)
    assert read(tags).refused == "ended"


def test_the_end_entry_removed_from_the_middle_of_the_ledger_is_seen():
    # given: the rollout ended and a promotion followed; then the end entry is deleted to revive the copied state
    tags, traffic = bound()
    end = entry(tags, move("canary", "2", "", traffic.rollout.id))
    entry(tags, move("production", "1", "3", kind="promote"))
    del tags[end]
    # then: the chain breaks after the start: refused (deleting the newest entry leaves only the expiry)
    refused = read(tags)
    assert refused.refused == "ledger" and "edited after rollout r1 started" in (refused.problem or "")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda tags, r: tags.pop(r.entry), "missing or changed"),
        (lambda tags, r: tags.update({r.entry: tags[r.entry].replace("test", "tset")}), "missing or changed"),
    ],
)
def test_a_start_entry_missing_or_edited_is_refused(change, reason):
    tags, traffic = bound()
    change(tags, traffic.rollout)
    refused = read(tags)
    assert refused.refused == "ledger" and reason in (refused.problem or "")


def test_a_start_entry_forged_without_the_key_is_refused_even_with_a_matching_hash():
    # given: someone without the key writes a start entry of their own and a state naming it (signed by the real
    # key: a state copied from an earlier rollout cannot name this entry, so here the worst case is assumed)
    tags: dict[str, str] = {}
    entry(tags, move("production", None, "1", kind="promote"))
    forged = entry(tags, move("canary", None, "2", "r9"), key=Ed25519PrivateKey.generate())
    rollout = Rollout("r9", at(0), forged, text_hash(tags[forged]))
    state(tags, Traffic("canary", "2", 50, rollout=rollout, expires=at(600)))
    refused = read(tags)
    assert refused.refused == "ledger" and "not accepted" in (refused.problem or "")


@pytest.mark.parametrize(
    ("kw", "version"),
    [({"rollout": "r1"}, "3"), ({"rollout": "other"}, "2")],
)
def test_a_start_entry_of_another_version_or_rollout_is_refused(kw, version):
    tags, rollout = started(version=version, **kw)
    state(tags, Traffic("canary", "2", 50, rollout=replace(rollout, id="r1"), expires=at(600)))
    assert read(tags).refused == "ledger"


def test_the_signature_covers_the_binding_and_an_old_format_state_is_refused():
    tags, _ = bound(expires_in=60)
    # a later expiry (or another rollout id) under the same signature does not verify
    extended = {**tags, contract.CANARY_EXPIRES: at(86_400)}
    assert read(extended).refused == "signature"
    # a state signed as before this change (mode:weight:share:salt, no binding) does not verify either
    legacy = Traffic("canary", "2", 50, 0.0, salt="ab" * 16)
    old = f"{legacy.mode}:{legacy.weight}:{legacy.shadow_share:g}:{legacy.salt}"
    from api.release.verdicts import Verdict

    signature = base64.b64encode(KEY.sign(Verdict("traffic", MODEL, "2", "", "", old, "").payload())).decode()
    legacy_tags = {**started()[0], **legacy.tags(), contract.CANARY_SIGNATURE: signature}
    assert read(legacy_tags).refused == "signature"


def test_unsigned_a_canary_weight_is_never_honoured_and_shadow_must_still_be_bound():
    # given: no verify key: anyone with registry write access writes what they like
    tags, _ = bound(weight=100, key=None)
    hand = read(tags, key=None)
    assert hand.mode == "off" and hand.refused == "unsigned_canary" and not hand.to_canary(["c1"])
    assert "RELEASE_VERIFY_KEY" in (hand.problem or "")
    # shadow (production answers everyone) is honoured when bound to a running rollout
    shadow_tags, shadow = bound(mode="shadow", weight=0, key=None)
    assert read(shadow_tags, key=None) == shadow
    bare = {contract.CANARY_MODE: "shadow", contract.CANARY_VERSION: "2", contract.CANARY_SHADOW_SHARE: "1"}
    assert read(bare, key=None).refused == "malformed"


@pytest.mark.parametrize(
    "garbage",
    [
        {contract.CANARY_WEIGHT: "fifty"},
        {contract.CANARY_EXPIRES: "tomorrow"},
        {contract.CANARY_EXPIRES: "2030-01-01T00:00:00"},  # no time zone
        {contract.CANARY_STARTED: ""},
        {contract.CANARY_MODE: "everything"},
    ],
)
def test_whatever_the_tags_hold_reading_never_raises(garbage):
    tags, _ = bound(key=None, mode="shadow", weight=0)
    refused = read({**tags, **garbage}, key=None)
    assert refused.mode == "off" and refused.refused == "malformed"


def test_the_reader_counts_each_refused_state_once_logs_it_once_and_forgets_it_when_accepted(caplog):
    tags, traffic = bound(expires_in=60)
    reader = TrafficReader(MODEL, "canary", KEY.public_key())
    with caplog.at_level(logging.WARNING, logger="api"):
        assert reader.read(tags, "2", now=NOW) == traffic and reader.refused is None
        for _ in range(3):
            assert reader.read(tags, "2", now=NOW + 61).mode == "off"
    report = reader.report()
    assert report["refusals"] == {"expired": 1} and report["refused"]["kind"] == "expired"
    assert report["refused"]["rollout"] == "r1" and report["refused"]["version"] == "2"
    assert sum("canary state refused (expired)" in r.message for r in caplog.records) == 1
    assert report["control"].startswith("canary states are verified")
    reader.read(tags, "2", now=NOW)
    assert reader.refused is None and reader.report()["refusals"] == {"expired": 1}


def test_unsigned_the_reader_says_so_plainly(caplog):
    with caplog.at_level(logging.WARNING, logger="api"):
        reader = TrafficReader(MODEL, "canary", None)
    assert reader.control.startswith("UNSIGNED") and "anyone with write access" in reader.control
    assert any("UNSIGNED" in r.message for r in caplog.records)
