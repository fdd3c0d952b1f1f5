"""A crafted model (allow-listed types, hostile arrays) never takes down a process that serves or decides."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.safe_model import ALLOWED_TYPES, artifact_digest
from pipeline.runtime.api_process import uvicorn_process

from ..crafted import apply, child_out_of_range, lightgbm_child_out_of_range, xgboost_child_out_of_range
from .test_api_live import wait_ready

pytestmark = pytest.mark.integration
MODEL = "churn-classifier"
# A small forest (the attack needs trees, not many): its F1 equals production's logistic regression within noise,
# so it is gated with a wider non-inferiority margin than the default 0.02.
FOREST = [
    "model.type=random_forest",
    "model.random_forest.n_estimators=5",
    "model.random_forest.max_depth=6",
    "gates.metrics.f1.max_drop=0.05",
]
# Small boosters the same way; their crafted files rewrite the booster's own stored model (tests/crafted.py).
BOOSTERS = {
    "xgboost": (["model.type=xgboost", "model.xgboost.n_estimators=20", *FOREST[3:]], xgboost_child_out_of_range),
    "lightgbm": (["model.type=lightgbm", "model.lightgbm.n_estimators=20", *FOREST[3:]], lightgbm_child_out_of_range),
}


def register(cli, *overrides: str) -> str:
    """train -> gate -> register -> smoke: a candidate that passed everything, not promoted; returns the version."""
    sets = [a for o in overrides for a in ("--set", o)]
    assert cli("train", *sets) == 0, cli.err
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id, *sets) == 0, cli.err
    assert cli("register", "--run-id", run_id) == 0, cli.err
    version = cli.out.strip()
    assert cli("smoke", "--version", version) == 0, cli.err
    return version


def craft(version: str, attack) -> None:
    """What an attacker with registry write access does: rewrite the model file, then every tag bound to it."""
    client = MlflowClient()
    store = Path(client.get_model_version_download_uri(MODEL, version).removeprefix("file://"))
    model = store / "model.skops"
    model.write_bytes(apply(attack, model.read_bytes(), sorted(ALLOWED_TYPES)))
    run_id = client.get_model_version(MODEL, version).run_id
    digest = artifact_digest(store, Path(client.download_artifacts(run_id, contract.FEATURE_SCHEMA)))
    for tag in (contract.ARTIFACT_DIGEST, contract.SMOKE_ARTIFACT_DIGEST):
        client.set_model_version_tag(MODEL, version, tag, digest)


def follow(url: str, version: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        info = httpx.get(url + "/model").json()
        if (info.get("refused") or {}).get("version") == version or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


def test_a_crafted_forest_is_refused_everywhere_and_every_process_lives_on(project, cli, releases):
    # given: production (1) released; an XGBoost (2) and a LightGBM (3) version that passed everything, then
    # crafted in their boosters' own formats; and the candidate, a forest (4) that passed everything, then crafted
    releases.restore(project, versions=1)
    boosters = []
    for overrides, attack in BOOSTERS.values():
        boosters.append(register(cli, *overrides))
        craft(boosters[-1], attack)
    crafted = register(cli, *FOREST)
    craft(crafted, child_out_of_range)
    run_id = MlflowClient().get_model_version(MODEL, "1").run_id
    record = json.loads(Path(MlflowClient().download_artifacts(run_id, contract.SMOKE_EXAMPLES)).read_text())
    env = {"MODEL_NAME": MODEL, "RELOAD_INTERVAL_S": "0.5"}
    with uvicorn_process(env) as url:
        wait_ready(url)
        # then: every command that would load it refuses it with the reason, and exits 1
        for command in (
            ("promote", "--version", crafted),
            ("rollback", "--to", crafted, "--reason", "try it"),
            ("score", "--input", "data/churn.csv", "--output", "out.csv", "--version", crafted),
        ):
            assert cli(*command) == 1, (command, cli.err)
            assert "outside the tree" in cli.err, (command, cli.err)
        for booster in boosters:  # each made the candidate again (by hand), so promote gets as far as loading it
            MlflowClient().set_registered_model_alias(MODEL, "candidate", booster)
            assert cli("promote", "--version", booster) == 1 and "outside the tree" in cli.err, (booster, cli.err)
        MlflowClient().set_registered_model_alias(MODEL, "candidate", crafted)
        assert cli.status()["aliases"]["production"] == "1" and not Path("out.csv").exists()
        # when: production is moved to each crafted booster by hand, the replica refuses it and serves on with 1
        for booster in boosters:
            MlflowClient().set_registered_model_alias(MODEL, "production", booster)
            info = follow(url, booster)
            assert info["version"] == "1" and "outside the tree" in info["refused"]["reason"], (booster, info)
            answer = httpx.post(url + "/predict", json={"records": record["records"][:1]})
            assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        # when: production is moved to it by hand
        MlflowClient().set_registered_model_alias(MODEL, "production", crafted)
        # then: the serving replica keeps answering with 1 and says why it refused the forest
        info = follow(url, crafted)
        assert info["version"] == "1" and "outside the tree" in info["refused"]["reason"], info
        answer = httpx.post(url + "/predict", json={"records": record["records"][:1]})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        # and a replica started now is alive and not ready, not crash-looping
        with uvicorn_process(env) as fresh:
            deadline = time.monotonic() + 60
            while "refused" not in (ready := httpx.get(fresh + "/ready")).text and time.monotonic() < deadline:
                time.sleep(0.2)
            assert ready.status_code == 503 and "outside the tree" in ready.text
            time.sleep(1)  # a retry of the load comes and goes: still alive
            assert httpx.get(fresh + "/health").status_code == 200
        # and the next gate reports production refused and goes on (unsigned), never dying
        assert cli("train") == 0
        assert cli("gate", "--run-id", cli.out.strip()) == 0, cli.err
        notes = json.loads(Path("reports/gate.json").read_text())["notes"]
        assert any(f"production v{crafted} refused" in n and "outside the tree" in n for n in notes), notes
        # and smoke refuses to pass it
        for version in (crafted, *boosters):
            assert cli("smoke", "--version", version) == 1 and "outside the tree" in cli.err, (version, cli.err)
        assert httpx.get(url + "/health").status_code == 200


def test_with_a_verify_key_a_tampered_production_fails_the_gate_before_anything_loads(
    project, cli, monkeypatch, releases
):
    # given: signed releases, production 1 and a signed forest candidate 2; then 2 is crafted and moved to by hand
    releases.restore(project, versions=1, signed=True)  # project/keys: the pair keygen made and 1 was signed with
    monkeypatch.setenv("RELEASE_SIGNING_KEY", str(project / "keys" / "release.key"))
    crafted = register(cli, *FOREST)
    craft(crafted, child_out_of_range)
    MlflowClient().set_registered_model_alias(MODEL, "production", crafted)
    # then: the gate's view of production checks its verdicts first: refused, and the gate fails saying why
    assert cli("train") == 0
    assert cli("gate", "--run-id", cli.out.strip()) == 1
    report = json.loads(Path("reports/gate.json").read_text())
    assert f"production v{crafted} refused" in report["baseline"]["error"]
    assert "not signed by the release key" in report["baseline"]["error"]
    # and rollback goes back along the verified ledger, to 1
    assert cli("rollback", "--reason", "hand-moved production") == 0 and cli.out.strip() == "1"
