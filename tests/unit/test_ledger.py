"""The release ledger reads whatever is in the tags without raising, and shows every edit, forgery or gap."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline.core.ledger import entry_key, is_rollback, make_entry, read_ledger

MODEL = "churn"


def move(alias="production", before=None, to="1", kind="promote", reason="promoted"):
    return {"alias": alias, "from": before, "to": to, "at": "2026-11-27T10:00:00+00:00", "reason": reason,
            "by": "ci", "git_sha": "abc", "image": "", "kind": kind}  # fmt: skip


def write(moves, key=None, start=1_000):
    """Tags as the registry adapter writes them: each entry chained to the one before."""
    tags, last = {}, None
    for i, m in enumerate(moves):
        name = entry_key(last, start + i, "aa")
        tags[name] = make_entry(MODEL, name, m, tags.get(last), key)
        last = name
    return tags


def test_a_chained_ledger_reads_back_in_order_with_no_anomaly():
    tags = write([move(), move(before="1", to="2"), move(before="2", to="1", kind="rollback")])
    ledger = read_ledger(MODEL, tags)
    assert [(m["from"], m["to"]) for m in ledger.entries] == [(None, "1"), ("1", "2"), ("2", "1")]
    assert ledger.anomalies == [] and is_rollback(ledger.entries[-1])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"alias": "production", "to": "2"}', "'at' missing or not text"),
        (json.dumps({**move(), "to": 2}), "'to' missing or not text"),
        (json.dumps({k: v for k, v in move().items() if k != "from"}), "'from' missing"),
    ],
)
def test_a_malformed_entry_is_an_anomaly_never_a_crash(text, problem):
    tags = write([move()])
    tags["alias_history.00000000000000009999.ff"] = text
    ledger = read_ledger(MODEL, tags)
    assert len(ledger.entries) == 1
    [anomaly] = ledger.anomalies
    assert anomaly["kind"] == "malformed_entry" and problem in anomaly["detail"]


def test_an_edited_or_removed_entry_breaks_the_chain_at_the_next_one():
    tags = write([move(), move(before="1", to="2"), move(before="2", to="3")])
    first, second, _ = sorted(tags)
    edited = dict(tags, **{first: tags[first].replace("promoted", "promoted by hand")})
    assert [a["kind"] for a in read_ledger(MODEL, edited).anomalies] == ["broken_chain"]
    removed = {k: v for k, v in tags.items() if k != second}
    [anomaly] = read_ledger(MODEL, removed).anomalies
    assert anomaly["kind"] == "broken_chain" and "was edited or removed" in anomaly["detail"]


def test_with_a_release_key_a_forged_or_unsigned_entry_is_left_out_and_named():
    key = Ed25519PrivateKey.generate()
    tags = write([move(), move(before="1", to="2")], key=key)
    assert read_ledger(MODEL, tags, key.public_key()).anomalies == []
    # an attacker who moved production by hand writes a matching entry, chained but not signed by the key
    last = max(tags)
    forged_key = entry_key(last, 5_000, "bb")
    tags[forged_key] = make_entry(MODEL, forged_key, move(before="2", to="9"), tags[last], Ed25519PrivateKey.generate())
    unsigned_key = entry_key(forged_key, 6_000, "cc")
    tags[unsigned_key] = make_entry(MODEL, unsigned_key, move(before="9", to="8"), tags[forged_key])
    ledger = read_ledger(MODEL, tags, key.public_key())
    assert [m["to"] for m in ledger.entries] == ["1", "2"]
    assert [(a["kind"], a["version"]) for a in ledger.anomalies] == [("forged_entry", "9"), ("unsigned_entry", "8")]
    # a signed entry copied under another key does not verify either
    replayed = {**tags, entry_key(unsigned_key, 7_000, "dd"): tags[min(tags)]}
    assert read_ledger(MODEL, replayed, key.public_key()).anomalies[-1]["kind"] in ("forged_entry", "broken_chain")


def test_entries_from_before_the_chain_are_history_and_an_unchained_one_after_it_is_not():
    legacy = {"alias_history.00000000000000000001.aa": json.dumps(move())}
    chained = write([move(before="1", to="2")], start=10)
    chained[next(iter(chained))] = make_entry(
        MODEL, next(iter(chained)), move(before="1", to="2"), legacy["alias_history.00000000000000000001.aa"]
    )
    tags = {**legacy, **chained, "alias_history.00000000000000000099.ee": json.dumps(move(before="2", to="7"))}
    ledger = read_ledger(MODEL, tags)
    assert [m["to"] for m in ledger.entries] == ["1", "2"]
    assert [a["kind"] for a in ledger.anomalies] == ["unchained_entry"]


def test_a_new_key_sorts_after_the_last_even_when_this_clock_is_behind():
    last = "alias_history.00000000000000005000.aa"
    assert entry_key(last, 10, "bb") == "alias_history.00000000000000005001.bb"
    assert entry_key(None, 10, "bb") == "alias_history.00000000000000000010.bb"
    assert entry_key(last, 9_000, "bb") > last


def test_a_rollouts_entries_carry_its_id_and_a_non_text_id_is_malformed():
    tags = write([move(), {**move("canary", None, "2", "rollout"), "rollout": "r1"}])
    ledger = read_ledger(MODEL, tags)
    assert ledger.anomalies == [] and ledger.entries[-1]["rollout"] == "r1"
    tags["alias_history.00000000000000009999.ff"] = json.dumps({**move("canary", "2", ""), "rollout": 7})
    [anomaly] = read_ledger(MODEL, tags).anomalies
    assert anomaly["kind"] == "malformed_entry" and "'rollout' is not text" in anomaly["detail"]


def test_read_since_a_key_reads_from_that_entry_on_its_first_link_unchecked():
    key = Ed25519PrivateKey.generate()
    tags = write([move(), move(before="1", to="2"), move(before="2", to="3"), move(before="3", to="4")], key=key)
    first, second, third, _ = sorted(tags)
    tags[first] = "edited by hand"  # before `since`: not read, and the entry read first is pinned by its reader
    ledger = read_ledger(MODEL, tags, key.public_key(), since=second)
    assert [m["to"] for m in ledger.entries] == ["2", "3", "4"] and ledger.anomalies == []
    del tags[third]  # removed after `since`: the next link breaks
    [anomaly] = read_ledger(MODEL, tags, key.public_key(), since=second).anomalies
    assert anomaly["kind"] == "broken_chain"
