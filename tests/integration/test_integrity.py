"""Invariant 1 against a hostile or clumsy teammate with registry write access, on a real sqlite store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from api.holder import ModelHolder
from api.release import contract
from api.release.check import RefusedVersion
from api.settings import Settings
from api.source import RegistrySource
from pipeline.core import interrupts
from pipeline.core.errors import CheckFailed
from pipeline.store.release_lock import EXPIRES, HOLDER, TICKET_SOURCE, lock_name, release_lock

from .candidate import restore_smoked_candidate
from .test_flow import deploy, register_candidate

pytestmark = pytest.mark.integration
MODEL = "churn-classifier"


class Payload:
    """Unpickling this creates the marker file: proof that code from an artifact ran."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))

    def predict(self, X):  # so MLflow adds a python_function flavor, as a real model would
        return X


def forge_pickle_version(project: Path, marker: Path) -> str:
    """A pickle 'model' registered with hand-set verdict tags, as an attacker with write access would."""
    client = MlflowClient()
    payload = Payload()
    payload.marker = str(marker)
    with mlflow.start_run() as run:
        # Requirements named, as an attacker would: inferring them costs a subprocess that unpickles the payload.
        info = mlflow.sklearn.log_model(
            payload, name="model", serialization_format="pickle", pip_requirements=["scikit-learn"]
        )
        mlflow.log_dict({"features": [], "positive_label": "Yes"}, contract.FEATURE_SCHEMA)
    marker.unlink(missing_ok=True)  # in case MLflow unpickled it while logging; only what follows counts
    mv = client.create_model_version(
        MODEL, source=f"models:/{info.model_id}", run_id=run.info.run_id, model_id=info.model_id
    )
    for key, value in {
        contract.GATE: "passed",
        contract.SMOKE: "passed",
        contract.ARTIFACT_DIGEST: "sha256:" + "0" * 64,
        contract.SMOKE_ARTIFACT_DIGEST: "sha256:" + "0" * 64,
    }.items():
        client.set_model_version_tag(MODEL, mv.version, key, value)
    return str(mv.version)


def registry_source(alias: str = "production", version: str | None = None) -> RegistrySource:
    return RegistrySource(Settings(model_alias=alias, model_version=version), MlflowClient())


def model_file(version: str) -> Path:
    uri = MlflowClient().get_model_version_download_uri(MODEL, version)
    return Path(mlflow.artifacts.download_artifacts(uri)).resolve()


def test_a_forged_pickle_never_runs_anywhere(project, cli, releases):
    # given: a released version 1, and a pickle whose loading would create a marker file
    releases.restore(project, versions=1)
    marker = project / "PWNED"
    forged = forge_pickle_version(project, marker)
    # when: someone rolls production to it
    assert cli("rollback", "--to", forged, "--reason", "trust me") == 1
    # then: refused, named, nothing moved
    assert "serialization format 'pickle'" in cli.err and "nothing moved" in cli.err
    assert cli.status()["aliases"]["production"] == "1"
    # when: production is moved to it by hand (the MLflow UI), the serving side and the next gate meet it
    MlflowClient().set_registered_model_alias(MODEL, "production", forged)
    holder = ModelHolder(source=registry_source())
    asyncio.run(holder.refresh())
    assert holder.current is None and "pickle" in holder.refused["reason"]
    assert cli("train") == 0
    assert cli("gate", "--run-id", cli.out.strip()) == 0  # unsigned: production refused, reported, not compared
    report = json.loads((project / "reports" / "gate.json").read_text())
    assert report["baseline"] is None
    assert any(f"production v{forged} refused" in n and "pickle" in n for n in report["notes"]), report["notes"]
    state = cli.status()
    assert any(a["alias"] == "production" and a["version"] == forged for a in state["anomalies"])
    # and no code from the artifact ran anywhere
    assert not marker.exists()


def test_hand_set_verdict_tags_count_for_nothing(project, cli):
    # given: a gate-failed run with gate=passed set by hand
    assert cli("train", "--set", "gates.f1_min=0.99") == 0
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id, "--set", "gates.f1_min=0.99") == 1
    MlflowClient().set_tag(run_id, contract.GATE, "passed")
    # then: register reads the stored report, not just the tag
    assert cli("register", "--run-id", run_id) == 1
    assert "gate report says 'failed'" in cli.err
    assert cli.status()["versions"] == []
    # given: a version whose smoke failed, with smoke=passed set by hand
    run_id = register_candidate(cli)
    client = MlflowClient()
    client.set_model_version_tag(MODEL, "1", contract.SMOKE, "failed")
    client.set_model_version_tag(MODEL, "1", contract.SMOKE, "passed")  # never smoke-tested: no digest recorded
    assert cli("promote", "--version", "1") == 1
    assert "artifact differs from what smoke tested" in cli.err
    assert cli.status()["aliases"].get("production") is None


def test_a_model_corrupted_after_its_smoke_is_refused_everywhere(project, cli, releases):
    # given: versions 1 and 2 released, 3 smoke-tested; then 2's and 3's model files change on the store
    restore_smoked_candidate(releases, project)
    stores = {v: Path(MlflowClient().get_model_version_download_uri(MODEL, v).removeprefix("file://")) for v in "23"}
    for store in stores.values():
        with open(store / "model.skops", "ab") as model:
            model.write(b"\0")
    # then: promote refuses, nothing moved
    assert cli("promote", "--version", "3") == 1
    assert "artifact changed since it was gated" in cli.err and "nothing moved" in cli.err
    assert cli.status()["aliases"]["production"] == "2"
    # a fresh replica following production refuses 2 and says why
    with pytest.raises(RefusedVersion, match="artifact changed"):
        registry_source().load("2")
    # rollback (production is 2) skips nothing older that is broken; rolling to 2 by name is refused
    assert cli("rollback", "--reason", "bad deploy") == 0 and cli.out.strip() == "1"
    assert cli("rollback", "--to", "2", "--reason", "back again") == 1
    assert "artifact changed" in cli.err
    assert cli.status()["aliases"]["production"] == "1"


def test_rollback_skips_broken_older_versions_and_names_them(project, cli, releases):
    releases.restore(project, versions=3)
    store = Path(MlflowClient().get_model_version_download_uri(MODEL, "2").removeprefix("file://"))
    (store / "model.skops").write_bytes(b"not a model")
    assert cli("rollback", "--reason", "incident") == 0
    assert cli.out.strip() == "1"
    assert "skipping version 2" in cli.err
    assert cli.status()["aliases"]["production"] == "1"


def test_a_hand_moved_production_is_an_anomaly_and_the_api_keeps_serving(project, cli, releases):
    # given: 1 released and serving; 2 registered but never smoke-tested
    releases.restore(project, versions=1)
    holder = ModelHolder(source=registry_source())
    asyncio.run(holder.refresh())
    assert holder.current.version == "1" and holder.current.info["signature"] == "unsigned"
    register_candidate(cli)
    # when: production is moved by hand
    MlflowClient().set_registered_model_alias(MODEL, "production", "2")
    # then: the API keeps 1 and says why; status lists the move and the unreleased version
    assert not asyncio.run(holder.refresh())
    assert holder.current.version == "1" and holder.refused == {**holder.refused, "version": "2"}
    assert "smoke pending" in holder.refused["reason"]
    state = cli.status()
    kinds = {(a["kind"], a["version"]) for a in state["anomalies"]}
    assert kinds == {("unrecorded_move", "2"), ("not_releasable", "2")}
    assert cli("status") == 0 and "⚠ anomalies" in cli.out
    # and a replica pinned to 2 refuses it too (smoke pending), but the one the smoke stage starts to test it
    with pytest.raises(RefusedVersion, match="smoke pending"):
        registry_source(version="2").load("2")
    smoke_replica = RegistrySource(Settings(model_version="2", smoke_test_version="2"), MlflowClient())
    assert smoke_replica.load("2").version == "2"


def test_signed_verdicts_make_hand_edited_tags_worthless(project, cli, monkeypatch, tmp_path, releases):
    # keygen makes a private key only its owner reads, and never overwrites one
    assert cli("keygen", "--out", str(tmp_path / "new-keys")) == 0
    assert cli("keygen", "--out", str(tmp_path / "new-keys")) == 2
    assert oct((tmp_path / "new-keys" / "release.key").stat().st_mode & 0o777) == "0o600"
    # given: a key pair made by keygen and a release made with its signing key (project/keys)
    releases.restore(project, versions=1, signed=True)
    public = (project / "keys" / "release.pub").read_text()
    assert oct((project / "keys" / "release.key").stat().st_mode & 0o777) == "0o600"
    monkeypatch.delenv("RELEASE_SIGNING_KEY", raising=False)
    # and version 2 released without the key (as a teammate's laptop would)
    deploy(cli)
    monkeypatch.setenv("RELEASE_VERIFY_KEY", public)
    state = cli.status()
    assert [v["signed"] for v in state["versions"]] == ["verified", "unsigned"]
    # then: with the verify key, the unsigned release cannot be rolled to, and the signed one can
    assert cli("rollback", "--to", "2", "--reason", "x") == 0  # already there: nothing to check or move
    assert cli("rollback", "--reason", "incident") == 0 and cli.out.strip() == "1"
    assert cli("rollback", "--to", "2", "--reason", "unsigned") == 1
    assert "not signed by the release key" in cli.err
    # a forged signature tag on 2 verifies no better
    MlflowClient().set_model_version_tag(MODEL, "2", contract.SMOKE_SIGNATURE, "AAAA")
    assert cli("rollback", "--to", "2", "--reason", "forged") == 1
    # and the API with the verify key refuses 2, serving 1
    source = RegistrySource(
        Settings(verify_key_pem=public), MlflowClient(), verify_key=Settings(verify_key_pem=public).verify_key()
    )
    with pytest.raises(RefusedVersion, match="not signed"):
        source.load("2")
    assert source.load("1").info["signature"] == "verified"


def test_credentials_in_the_tracking_uri_never_show(project, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9/")
    assert cli("status") == 3
    assert "s3cret" not in cli.err + cli.out
    assert "http://***@127.0.0.1:9" in cli.err and "Traceback" not in cli.err
    holder = ModelHolder(source=RegistrySource(Settings(), MlflowClient("http://alice:s3cret@127.0.0.1:9/")))
    asyncio.run(holder.refresh())
    assert "s3cret" not in holder.not_ready_reason


def test_nothing_writes_a_local_verdict_before_the_registry_has_it(project, cli):
    assert cli("train") == 0
    run_id = cli.out.strip()
    # a stale passing report from an earlier run must not survive a gate that cannot record its verdict
    (project / "reports").mkdir()
    (project / "reports" / "gate.json").write_text('{"verdict": "passed"}')
    artifacts = Path(MlflowClient().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (artifacts / "gate").write_text("a file where the gate report directory goes: the store refuses the write")
    assert cli("gate", "--run-id", run_id) == 3
    assert "Traceback" not in cli.err and len(cli.err.strip().splitlines()[-1]) < 600
    assert not (project / "reports" / "gate.json").exists()
    assert MlflowClient().get_run(run_id).data.tags[contract.GATE] == "pending"


def test_the_release_lock_is_exclusive_and_an_expired_one_is_passed_over(project, cli, capsys, releases):
    releases.restore(project, versions=1)
    client = MlflowClient()
    events: list[str] = []

    def second_release():
        with release_lock(client, MODEL, wait_s=30):
            events.append("second acquired")

    # given: one release holds the lock
    with release_lock(client, MODEL):
        # then: another cannot take it within a short wait, and says who holds it
        with (
            pytest.raises(CheckFailed, match="another release holds the lock"),
            release_lock(client, MODEL, wait_s=0.5),
        ):
            pass
        # and a patient one gets it only after the first let go
        waiter = threading.Thread(target=second_release)
        waiter.start()
        time.sleep(1.0)
        events.append("first released")
    waiter.join(timeout=30)
    assert events == ["first released", "second acquired"]
    # given: a holder that died and left an expired ticket
    client.create_model_version(
        lock_name(MODEL), source=TICKET_SOURCE, tags={HOLDER: "dead-runner", EXPIRES: "2020-01-01T00:00:00+00:00"}
    )
    with release_lock(client, MODEL, wait_s=5):
        pass
    assert "passing over the release lock of dead-runner" in capsys.readouterr().err
    assert client.search_model_versions(f"name='{lock_name(MODEL)}'") == []  # no ticket left behind


def test_a_signal_while_the_ticket_is_taken_leaves_no_ticket_behind(project, monkeypatch):
    client = MlflowClient()
    take = client.create_model_version

    def interrupted_take(*args, **kwargs):  # the signal lands while the store creates the ticket
        os.kill(os.getpid(), signal.SIGTERM)
        return take(*args, **kwargs)

    monkeypatch.setattr(client, "create_model_version", interrupted_take)
    with (
        interrupts.handled(),
        pytest.raises(interrupts.Interrupted, match="SIGTERM"),
        release_lock(client, MODEL),
    ):
        pytest.fail("the lock was taken past a signal")
    # then: the ticket that was created is deleted, so the next release goes ahead at once
    assert client.search_model_versions(f"name='{lock_name(MODEL)}'") == []
