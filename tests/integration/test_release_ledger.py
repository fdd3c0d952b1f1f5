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
