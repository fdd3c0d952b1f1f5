"""Delayed outcomes end to end: a prediction log as the API writes it, labels fed by file, live quality, watch.

Real components: signed releases 1 and 2 in a sqlite MLflow registry (the shared snapshots), prediction
segments written with pyarrow in PREDICTION_LOG_URI's layout and schema, the CLI in-process.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from prometheus_client import generate_latest

from api.holder import ModelHolder
from api.log_layout import LABELS, PREDICTION_SCHEMA, PREDICTIONS, filesystem
from api.metrics import ServiceMetrics
from api.release import contract
from api.release.verdicts import load_verify_key, quality_verdict
from api.settings import Settings
from api.source import RegistrySource

from .candidate import restore_smoked_candidate
from .test_team_server import BUCKET, S3_KEYS, s3  # noqa: F401  # s3: the moto server fixture, reused

MODEL = "churn-classifier"
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
CUSTOMERS = 400


@pytest.fixture
def signed(project, releases, monkeypatch):
    """Signed releases 1 and 2 (production 2), both keys set, the log in project/log."""
    releases.restore(project, versions=2, signed=True)
    monkeypatch.setenv("RELEASE_SIGNING_KEY", str(project / "keys" / "release.key"))
    monkeypatch.setenv("RELEASE_VERIFY_KEY", str(project / "keys" / "release.pub"))
    monkeypatch.setenv("PREDICTION_LOG_URI", str(project / "log"))
    return project


def write_segment(project, version: str, role: str, rows: pd.DataFrame, wrong: bool) -> None:
    """One flush of answers for `rows` of the data, as the API logs them; `wrong`: every label the opposite."""
    folder = project / "log" / "predictions" / MODEL / T0.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(segment(version, role, rows, wrong), folder / f"120000.000000-test-{version}-{role}.parquet")


def segment(version: str, role: str, rows: pd.DataFrame, wrong: bool) -> pa.Table:
    """The answers of `version` (as `role`) for `rows` of the data, in PREDICTION_SCHEMA."""
    truth = rows["Churn"] == "Yes"
    says_yes = ~truth if wrong else truth
    features = rows.drop(columns=["Churn"])
    return pa.Table.from_pydict(
        {
            "time": [T0 + timedelta(minutes=i) for i in range(len(rows))],
            "prediction_id": [f"{role}-{version}-{c}" for c in rows["customerID"]],
            "entity_id": list(rows["customerID"]),
            "model": [MODEL] * len(rows),
            "version": [version] * len(rows),
            "role": [role] * len(rows),
            "score": [0.9 if yes else 0.1 for yes in says_yes],
            "label": ["Yes" if yes else "No" for yes in says_yes],
            "features": [json.dumps(record) for record in features.to_dict("records")],
        },
        schema=PREDICTION_SCHEMA,
    )


def labels_file(project, rows: pd.DataFrame) -> str:
    """Outcomes for the customers: half by prediction id, half by customer; then 5 repeats, 3 conflicts, 2 unknown."""
    half = len(rows) // 2
    by_id = pd.DataFrame({"prediction_id": [f"production-2-{c}" for c in rows["customerID"][:half]],
                          "outcome": list(rows["Churn"][:half])})  # fmt: skip
    by_customer = pd.DataFrame({
        "entity_id": list(rows["customerID"][half:]),
        "observed_at": [(T0 + timedelta(days=10)).isoformat()] * (len(rows) - half),
        "outcome": list(rows["Churn"][half:]),
    })  # fmt: skip
    repeats = by_id.iloc[:5]
    conflicts = by_id.iloc[5:8].assign(outcome=lambda f: f["outcome"].map({"Yes": "No", "No": "Yes"}))
    unknown = pd.DataFrame({"prediction_id": ["ghost-1", "ghost-2"], "outcome": ["Yes", "No"]})
    path = project / "labels.csv"
    pd.concat([by_id, by_customer, repeats, conflicts, unknown], ignore_index=True).to_csv(path, index=False)
    return str(path)


def test_labels_fed_twice_then_a_degraded_version_fails_quality_signed_and_watch_rolls_it_back(signed, cli):
    # given: production v2's answers for 400 customers, every one wrong, and the customers' outcomes in a file
    data = pd.read_csv(signed / "data" / "churn.csv", dtype=str, keep_default_na=False).iloc[:CUSTOMERS]
    write_segment(signed, "2", "production", data, wrong=True)
    labels = labels_file(signed, data)
    # when: the file is fed twice
    assert cli("outcomes", "--labels", labels) == 0, cli.err
    first = cli.out
    assert cli("outcomes", "--labels", labels) == 0, cli.err
    # then: one label segment; the second feed wrote nothing and the join counts the same
    assert "recorded as labels/" in first and "already recorded" in cli.out
    assert len(list((signed / "log" / "labels").glob("*.parquet"))) == 1
    assert first.splitlines()[1:] == cli.out.splitlines()[1:]
    # each conflict leaves its prediction unlabelled: both the first outcome and the contradicting one are unused
    assert "not used, duplicate: 5" in cli.out and "not used, conflicting: 6" in cli.out
    assert "not used, unknown id: 2" in cli.out and "predictions left unlabelled by conflicting outcomes: 3" in cli.out
    assert f"labelling {CUSTOMERS - 3} predictions" in cli.out

    # when: live quality is judged
    assert cli("quality") == 1
    assert "live quality failed for v2" in cli.err
    # then: v2's verdict is failed, its figures signed and verified, and the reports are written
    mv = MlflowClient().get_model_version(MODEL, "2")
    assert mv.tags[contract.QUALITY] == "failed" and mv.tags[contract.QUALITY_LOOKS] == "1"
    key = load_verify_key(str(signed / "keys" / "release.pub"))
    found = quality_verdict(mv.tags, key, model=MODEL, version="2", run_id=str(mv.run_id))
    assert found is not None and found.state == "verified" and found.verdict == "failed"
    assert found.figures["labelled"] == CUSTOMERS - 3 and found.figures["metrics"]["f1"]["live"] == 0.0
    assert found.figures["metrics"]["f1"]["gate"] > 0.5
    report = json.loads((signed / "reports" / "quality.json").read_text())
    assert report["versions"]["2"]["verdict"] == "failed" and report["join"]["not_used_duplicate"] == 5
    assert "❌ failed" in (signed / "reports" / "quality.md").read_text()
    # and a figure changed by hand no longer verifies: the verdict is not read
    tampered = {
        **mv.tags,
        contract.QUALITY_FIGURES: mv.tags[contract.QUALITY_FIGURES].replace('"labelled":397', '"labelled":9'),
    }
    assert quality_verdict(tampered, key, model=MODEL, version="2", run_id=str(mv.run_id)) is None

    # and every replica's /metrics shows it, from the verdict it verified at its registry poll
    text = metrics_after_a_poll(signed, "2")
    assert 'model_quality_failed{version="2"} 1.0' in text
    assert (
        'model_live_f1{bound="estimate",version="2"} 0.0' in text and 'model_live_labelled{version="2"} 397.0' in text
    )
    assert f'model_gate_f1{{version="2"}} {found.figures["metrics"]["f1"]["gate"]}' in text

    # when: the bake watches production with a quality rule
    assert cli("watch", "--set", "rollout.bake.quality.max_drop=0.05") == 1
    # then: production is rolled back to v1, saying why
    assert "failed rollout.bake.quality" in cli.err and "rolled back to 1" in cli.err
    assert str(MlflowClient().get_registered_model(MODEL).aliases["production"]) == "1"
    assert json.loads((signed / "reports" / "watch.json").read_text())["verdict"] == "rolled back"


def metrics_after_a_poll(project, version: str) -> str:
    """What a replica serving `version` (verify key set) exports once its registry poll has run."""
    settings = Settings(model_version=version)  # RELEASE_VERIFY_KEY from the environment (the fixture sets it)
    metrics = ServiceMetrics()
    holder = ModelHolder(source=RegistrySource(settings, MlflowClient(), verify_key=settings.verify_key()))
    holder.watch(metrics)
    asyncio.run(holder.refresh())
    return generate_latest(metrics.registry).decode()


def test_too_few_labels_is_inconclusive_and_the_labelled_rows_become_training_rows(signed, cli, monkeypatch):
    # given: 60 of production's answers (right), 40 of a shadow's, all labelled by customer
    data = pd.read_csv(signed / "data" / "churn.csv", dtype=str, keep_default_na=False).iloc[:60]
    write_segment(signed, "2", "production", data, wrong=False)
    write_segment(signed, "1", "shadow", data.iloc[:40], wrong=False)
    outcomes = pd.DataFrame({"entity_id": data["customerID"], "observed_at": (T0 + timedelta(days=1)).isoformat(),
                             "outcome": data["Churn"]})  # fmt: skip
    outcomes.to_parquet(signed / "labels.parquet")
    assert cli("outcomes", "--labels", str(signed / "labels.parquet")) == 0, cli.err
    assert "labelling 100 predictions" in cli.out
    # when: quality runs with the default 200 labelled rows needed, in a GitHub job
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(signed / "summary.md"))
    monkeypatch.setenv("GITHUB_OUTPUT", str(signed / "outputs"))
    assert cli("quality") == 0, cli.err
    # then: both versions are inconclusive and say why; nothing fails
    assert cli.out.strip() == "v1 inconclusive, v2 inconclusive"
    report = json.loads((signed / "reports" / "quality.json").read_text())
    assert "not enough labelled rows (60 of the 200" in report["versions"]["2"]["reason"]
    assert report["versions"]["1"]["paired"]["with"] == "2" and report["versions"]["1"]["paired"]["pairs"] == 40
    assert "Live quality no rule failed" in (signed / "summary.md").read_text()
    assert "\ninconclusive\n" in (signed / "outputs").read_text()
    # when: the training set is built from the base data and the log
    assert cli("training-set", "--out", str(signed / "build" / "train.csv")) == 0, cli.err
    # then: the 60 production rows are appended in the data's shape; the shadow's copies are counted, not added
    built = pd.read_csv(signed / "build" / "train.csv", dtype=str, keep_default_na=False)
    base = pd.read_csv(signed / "data" / "churn.csv", dtype=str, keep_default_na=False)
    assert list(built.columns) == list(base.columns) and len(built) == len(base) + 60
    pd.testing.assert_frame_equal(built.iloc[len(base) :].reset_index(drop=True), data.reset_index(drop=True))
    assert "60 from the labelled prediction log" in cli.out and "skipped 40 shadow answers" in cli.out


def test_a_labels_file_without_an_outcome_column_is_refused_naming_it(signed, cli):
    (signed / "bad.csv").write_text("prediction_id,result\np1,Yes\n")
    assert cli("outcomes", "--labels", str(signed / "bad.csv")) == 2
    assert "no outcome column" in cli.err
    (signed / "bad2.csv").write_text("entity_id,outcome,observed_at\nc1,Yes,not a time\n")
    assert cli("outcomes", "--labels", str(signed / "bad2.csv")) == 2
    assert "column observed_at must hold ISO 8601 times" in cli.err
    assert not (signed / "log" / "labels").exists()


def test_rollout_refuses_a_candidate_whose_quality_verdict_failed(project, cli, releases, monkeypatch):
    # given: 1 and 2 released, 3 a smoked candidate whose canary answers were all wrong, labelled by customer
    restore_smoked_candidate(releases, project)
    monkeypatch.setenv("PREDICTION_LOG_URI", str(project / "log"))
    data = pd.read_csv(project / "data" / "churn.csv", dtype=str, keep_default_na=False).iloc[:CUSTOMERS]
    write_segment(project, "3", "canary", data, wrong=True)
    write_segment(project, "2", "production", data, wrong=False)
    outcomes = pd.DataFrame({"entity_id": data["customerID"], "observed_at": (T0 + timedelta(days=3)).isoformat(),
                             "outcome": data["Churn"]})  # fmt: skip
    outcomes.to_csv(project / "labels.csv", index=False)
    assert cli("outcomes", "--labels", str(project / "labels.csv")) == 0, cli.err
    assert cli("quality", "--version", "3") == 1
    # then: the canary is paired with production on the same customers in the report
    paired = json.loads((project / "reports" / "quality.json").read_text())["versions"]["3"]["paired"]
    assert paired["with"] == "2" and paired["pairs"] == CUSTOMERS and paired["delta"]["f1"] < -0.5
    # when: the rollout holds candidates to a quality rule
    assert cli("rollout", "--version", "3", "--api-url", "http://127.0.0.1:9",
               "--set", "rollout.quality={min_labelled: 200, max_drop: 0.05}") == 1  # fmt: skip
    # then: it is refused before any traffic moves; production is still 2
    assert "version 3 refused: its live quality failed rollout.quality" in cli.err
    assert str(MlflowClient().get_registered_model(MODEL).aliases["production"]) == "2"
    # and without the rule, the verdict is not held against it (existing behaviour: the rollout goes on to need
    # live traffic, which nothing serves here)
    assert cli("rollout", "--version", "3", "--api-url", "http://127.0.0.1:9") != 0
    assert "live quality" not in cli.err


def test_a_log_in_s3_takes_a_labels_file_once(project, cli, s3, monkeypatch):  # noqa: F811
    # given: a log under a prefix of the team server's bucket (moto), holding 50 answers of an unregistered model
    for name, value in {**S3_KEYS, "AWS_ENDPOINT_URL": s3, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    uri = f"s3://{BUCKET}/prediction-log-{secrets.token_hex(4)}"
    monkeypatch.setenv("PREDICTION_LOG_URI", uri)
    fs, base = filesystem(uri)
    data = pd.read_csv(project / "data" / "churn.csv", dtype=str, keep_default_na=False).iloc[:50]
    pq.write_table(segment("1", "production", data, wrong=False), f"{base}/{PREDICTIONS}/{MODEL}/2026-03-01/a.parquet",
                   filesystem=fs)  # fmt: skip
    labels = pd.DataFrame(
        {"prediction_id": [f"production-1-{c}" for c in data["customerID"]], "outcome": data["Churn"]}
    )
    labels.to_parquet(project / "labels.parquet")
    # when: the file is fed twice
    assert cli("outcomes", "--labels", str(project / "labels.parquet")) == 0, cli.err
    assert "recorded as labels/" in cli.out and "labelling 50 predictions" in cli.out
    assert "params data.positive_label (no registered version)" in cli.out
    assert cli("outcomes", "--labels", str(project / "labels.parquet")) == 0, cli.err
    # then: one object under labels/, and the second feed said so
    assert "already recorded" in cli.out and "labelling 50 predictions" in cli.out
    found = fs.get_file_info(pafs.FileSelector(f"{base}/{LABELS}", recursive=True))
    assert len([info for info in found if info.path.endswith(".parquet")]) == 1


def test_a_rollback_never_returns_on_its_own_to_a_version_whose_live_quality_failed(signed, cli):
    # given: production v2 and the version before it, v1, both wrong on every customer, and the outcomes fed
    data = pd.read_csv(signed / "data" / "churn.csv", dtype=str, keep_default_na=False).iloc[:CUSTOMERS]
    write_segment(signed, "1", "production", data, wrong=True)
    write_segment(signed, "2", "production", data, wrong=True)
    assert cli("outcomes", "--labels", labels_file(signed, data)) == 0, cli.err
    # and both judged: each verdict failed
    assert cli("quality", "--set", "rollout.outcomes.min_labelled=100") == 1
    tags = {v: MlflowClient().get_model_version(MODEL, v).tags for v in ("1", "2")}
    assert tags["1"][contract.QUALITY] == "failed" and tags["2"][contract.QUALITY] == "failed"
    # when: production is rolled back without naming a version
    assert cli("rollback", "--reason", "live quality of version 2 failed") == 1
    # then: v1 is skipped, naming its verdict, and production stays where it was
    assert "version 1: its live quality verdict failed" in cli.err and "nothing moved" in cli.err
    assert str(MlflowClient().get_registered_model(MODEL).aliases["production"]) == "2"
    # and a rollback naming v1 deliberately still goes there
    assert cli("rollback", "--reason", "back to 1 on purpose", "--to", "1") == 0, cli.err
    assert str(MlflowClient().get_registered_model(MODEL).aliases["production"]) == "1"
