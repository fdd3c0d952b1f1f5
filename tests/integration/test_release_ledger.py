"""What promote, rollback and publish trust is signed; the ledger shows every forgery (real sqlite store)."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mlflow.tracking import MlflowClient

from api.release import contract
from pipeline.core.ledger import entry_key, make_entry

from .test_flow import register_candidate

pytestmark = pytest.mark.integration
MODEL = "churn-classifier"


def anomalies(cli) -> set[tuple[str, str | None]]:
    return {(a["kind"], a["version"]) for a in cli.status()["anomalies"]}


def test_signed_releases_cover_baseline_image_and_ledger_and_rollback_follows_the_ledger(
    project, cli, monkeypatch, releases
):
    # given: signed releases 1, 2, 3 (production 3), made with the key in project/keys
    releases.restore(project, versions=3, signed=True)
    monkeypatch.setenv("RELEASE_SIGNING_KEY", str(project / "keys" / "release.key"))
    client = MlflowClient()
    # then: rollback goes back along the ledger, and never forward again to what it rolled back from
    assert cli("rollback", "--reason", "3 misbehaves") == 0 and cli.out.strip() == "2"
    assert cli("rollback", "--reason", "2 misbehaves too") == 0 and cli.out.strip() == "1"
    assert cli("rollback", "--reason", "again") == 1 and "nothing to roll back to" in cli.err
    assert [m["kind"] for m in cli.status()["history"] if m["alias"] == "production"] == [
        "promote", "promote", "promote", "rollback", "rollback",
    ]  # fmt: skip
    assert anomalies(cli) == set()
    # given: candidate 4 gated against production 1, then production moved to 2 underneath it
    register_candidate(cli)
    assert cli("smoke", "--version", "4") == 0
    assert cli("rollback", "--to", "2", "--reason", "2 was fine after all") == 0
    assert cli("promote", "--version", "4") == 1 and "production moved from 1 to 2" in cli.err
    # when: someone rewrites the baseline the gate compared against, so the compare-and-set would pass
    client.set_model_version_tag(MODEL, "4", contract.GATE_BASELINE, "2")
    # then: the gate verdict covers the baseline: refused, nothing moved
    assert cli("promote", "--version", "4") == 1 and "gate verdict is not signed" in cli.err
    assert cli.status()["aliases"]["production"] == "2"
    # when: someone rewrites the image ID smoke recorded (what publish pushes)
    client.set_model_version_tag(MODEL, "1", contract.SMOKE_IMAGE_DIGEST, "sha256:" + "e" * 64)
    # then: the smoke verdict covers it: 1 may not be rolled to, nor published
    assert cli("rollback", "--to", "1", "--reason", "x") == 1 and "smoke verdict is not signed" in cli.err
    monkeypatch.setenv("GITHUB_SHA", "0" * 40)
    assert cli("publish", "--version", "1", "--image", "churn-api:x", "--repository", "127.0.0.1:9/x") == 1
    assert "may not be released (smoke verdict is not signed" in cli.err


def test_a_hand_move_with_a_matching_entry_and_malformed_entries_are_anomalies_never_a_crash(
    project, cli, monkeypatch, releases
):
    releases.restore(project, versions=1, signed=True)
    monkeypatch.setenv("RELEASE_SIGNING_KEY", str(project / "keys" / "release.key"))
    register_candidate(cli)
    client = MlflowClient()
    # when: production is moved by hand and a matching, chained entry is written with another key
    client.set_registered_model_alias(MODEL, "production", "2")
    tags = client.get_registered_model(MODEL).tags
    last = max(k for k in tags if k.startswith(contract.HISTORY_PREFIX))
    key = entry_key(last, 0, secrets.token_hex(3))
    move = {"alias": "production", "from": "1", "to": "2", "at": "now", "reason": "promoted", "by": "ci",
            "git_sha": "x", "image": "", "kind": "promote"}  # fmt: skip
    client.set_registered_model_tag(MODEL, key, make_entry(MODEL, key, move, tags[last], Ed25519PrivateKey.generate()))
    # then: the entry does not verify, so the move stays unexplained
    assert {("forged_entry", "2"), ("unrecorded_move", "2"), ("not_releasable", "2")} <= anomalies(cli)
    # when: entries are broken in every way a hand can break them
    for i, text in enumerate(["not json", '{"alias": "production"}', "[1, 2]"]):
        client.set_registered_model_tag(MODEL, f"{contract.HISTORY_PREFIX}9{i:019d}.zz", text)
    # then: status still answers (exit 0), naming each, and the table flags them
    kinds = [a["kind"] for a in cli.status()["anomalies"]]
    assert kinds.count("malformed_entry") == 3
    assert cli("status") == 0 and "ledger entry alias_history.9" in cli.out and "is malformed" in cli.out
    # and rollback still finds its way back along the verified entries
    assert cli("rollback", "--reason", "hand move") == 0 and cli.out.strip() == "1"


def test_a_rollouts_ledger_entries_bind_its_canary_state_and_unsigned_it_runs_no_canary_step(
    project, cli, monkeypatch, releases
):
    from api.release.traffic import Traffic
    from api.release.traffic_reading import read_traffic
    from pipeline.core.release_keys import load_signing_key, verify_key
    from pipeline.store import alias_moves
    from pipeline.store.release_lock import release_lock

    # given: signed releases 1, 2, 3, production rolled back to 2: 3 is never rolled out again
    releases.restore(project, versions=3, signed=True)
    monkeypatch.setenv("RELEASE_SIGNING_KEY", str(project / "keys" / "release.key"))
    assert cli("rollback", "--reason", "make room for a rollout") == 0 and cli.out.strip() == "2"
    assert cli("rollout", "--version", "3", "--api-url", "http://127.0.0.1:9") == 1
    assert "version 3 was rolled back out of production" in cli.err
    # and a new candidate, 4, gated against 2 and smoke-tested
    assert cli("train") == 0, cli.err
    run_id = cli.out.strip().splitlines()[-1]
    assert cli("gate", "--run-id", run_id) == 0 and cli("register", "--run-id", run_id) == 0, cli.err
    candidate = cli.out.strip()
    assert cli("smoke", "--version", candidate) == 0, cli.err
    # when: rollout runs without a signing key
    monkeypatch.delenv("RELEASE_SIGNING_KEY")
    code = cli("rollout", "--version", candidate, "--api-url", "http://127.0.0.1:9")
    # then: it refuses its canary steps before anything moves (an unsigned weight is honoured by no replica)
    assert code == 2 and "rollout.steps needs RELEASE_SIGNING_KEY" in cli.err and "steps=[]" in cli.err
    assert "canary" not in cli.status()["aliases"]
    # given: a rollout of 3 started as rollout starts it, its state signed; then @canary moved by hand to 1
    key = load_signing_key(str(project / "keys" / "release.key"))
    monkeypatch.setenv("RELEASE_VERIFY_KEY", str(project / "keys" / "release.pub"))
    client = MlflowClient()
    with release_lock(client, MODEL):
        rollout = alias_moves.start_rollout(client, MODEL, "canary", "3", "rollout: shadow", key)
        state = Traffic("shadow", "3", 0, 0.5, salt="ab" * 16, rollout=rollout, expires="2999-01-01T00:00:00+00:00")
        alias_moves.set_traffic(client, MODEL, state, key)
    tags = client.get_registered_model(MODEL).tags
    assert read_traffic(tags, "3", MODEL, verify_key()) == state
    client.set_registered_model_alias(MODEL, "canary", "1")
    # when: the rollout ends (it finds @canary elsewhere: it records its end where the alias is, and leaves it)
    with release_lock(client, MODEL):
        alias_moves.end_rollout(client, MODEL, "canary", "3", rollout.id, "rollout ended: aborted", key)
    # then: the ledger names the end, explains everything but the hand move, and the copied state is refused
    status = cli.status()
    last = status["history"][-1]
    assert (last["alias"], last["from"], last["to"], last["rollout"]) == ("canary", "1", "1", rollout.id)
    assert {(a["kind"], a["version"]) for a in status["anomalies"]} == {("unrecorded_move", "1")}
    client.set_registered_model_alias(MODEL, "canary", "3")
    for name, value in {k: v for k, v in tags.items() if k.startswith("canary.")}.items():
        client.set_registered_model_tag(MODEL, name, value)
    replayed = read_traffic(client.get_registered_model(MODEL).tags, "3", MODEL, verify_key())
    assert replayed.mode == "off" and replayed.refused == "ended" and "aborted" in (replayed.problem or "")
    assert cli.status()["canary"]["refused"] == "ended"
