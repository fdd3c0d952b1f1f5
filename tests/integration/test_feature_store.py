"""The feature store for real: Feast 0.67 in build/feast-venv, a repo copy applied and materialized in tmp.

One module fixture builds the data of 300 customers (with an older snapshot each), applies featurestore/repo's
definitions and materializes twice (the second run has nothing new). Then: describe, point-in-time retrieval
(rows between the snapshots see the older values, rows after see the newer, in the entity frame's order), rows
Feast would drop are refused, Feast's online read matches the views, the team configuration on a real
redis-server (and exit 3 once it is down), and the CLI's exit codes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.core.churn_data import generate_churn
from pipeline.core.feature_data import (
    ENTITY,
    EVENT_TIMESTAMP,
    HISTORY_GAP,
    VIEWS,
    default_times,
    earlier_values,
    feature_frames,
    write_feature_data,
)
from pipeline.store import feature_store
from pipeline.store.feature_store import FeatureStoreError

from ..conftest import ROOT

REDIS_SERVER = Path("/usr/bin/redis-server")
SERVICE = "churn_model"
CUSTOMERS = 300

pytestmark = pytest.mark.skipif(not feature_store.feast_python().is_file(), reason="needs build/feast-venv")


@dataclass(frozen=True)
class Store:
    root: Path  # a project copy: featurestore/repo and data/features
    repo: Path
    churn: pd.DataFrame  # as the CSV path reads it (text)
    snapshot: datetime
    observed: datetime
    applied: dict
    first: dict  # the first incremental materialization
    second: dict  # the second, right after


def project_copy(directory: Path) -> Path:
    """featurestore/repo copied under `directory`, with data/features beside it as in the project."""
    shutil.copytree(ROOT / "featurestore" / "repo", directory / "featurestore" / "repo")
    (directory / "data" / "features").mkdir(parents=True)
    return directory / "featurestore" / "repo"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("feast")
    repo = project_copy(root)
    csv = root / "data" / "churn.csv"
    generate_churn(CUSTOMERS, 11).to_csv(csv, index=False)
    churn = pd.read_csv(csv, dtype=str, keep_default_na=False, na_values=[""])
    snapshot, observed = default_times()
    write_feature_data(root / "data" / "features", churn, snapshot, observed, history=True)
    applied = feature_store.apply(repo)
    first = feature_store.materialize(repo)
    second = feature_store.materialize(repo)
    return Store(root, repo, churn, snapshot, observed, applied, first, second)


def test_apply_registers_the_views_and_the_service(store):
    assert store.applied["project"] == "churn"
    assert set(store.applied["views"]) == set(VIEWS)
    assert store.applied["services"] == [SERVICE]
    assert (store.root / "data" / "features" / "registry.db").is_file()
    assert (store.root / "data" / "features" / "online.db").is_file()
    assert not (store.repo / "registry.db").exists()  # relative paths resolve against the repo, not the cwd


def test_materialize_is_incremental(store):
    first, second = store.first, store.second
    assert set(first["views"]) == set(VIEWS)
    # both snapshots of every customer lie inside the first window (now - ttl .. now)
    assert first["view_rows"] == {view: 2 * CUSTOMERS for view in VIEWS}
    assert first["rows"] == 2 * CUSTOMERS * len(VIEWS)
    assert datetime.fromisoformat(first["start"]) < store.snapshot - HISTORY_GAP
    assert datetime.fromisoformat(first["end"]) >= store.snapshot
    # the second run starts where the first ended and finds nothing new
    assert second["rows"] == 0
    assert second["start"] == first["end"]
    assert datetime.fromisoformat(second["end"]) > datetime.fromisoformat(first["end"])


def test_describe_names_the_views_features_and_dtypes_and_hashes_the_definitions(store):
    described = feature_store.describe(store.repo, SERVICE)
    assert described.service == SERVICE and described.entity_field == ENTITY
    assert [v.name for v in described.views] == list(VIEWS)
    for view in described.views:
        assert [name for name, _ in view.features] == list(VIEWS[view.name])
    types = {name: dtype for view in described.views for name, dtype in view.features}
    assert types["tenure"] == types["SeniorCitizen"] == "Int64"
    assert types["MonthlyCharges"] == "Float64" and types["TotalCharges"] == "String"
    assert described.feature_names == tuple(name for view in VIEWS.values() for name in view)
    assert described.definitions_hash == store.applied["definitions_hash"]
    definitions = store.repo / "churn_features.py"
    original = definitions.read_bytes()
    try:
        definitions.write_bytes(original + b"\n# a changed definition file\n")
        assert feature_store.describe(store.repo, SERVICE).definitions_hash != described.definitions_hash
    finally:
        definitions.write_bytes(original)


def test_historical_is_point_in_time_correct_in_the_entity_frames_order(store):
    ids = store.churn[ENTITY].tolist()
    between = store.snapshot - HISTORY_GAP / 2  # after the older snapshot, before the newer one
    rows = pd.DataFrame(
        {
            ENTITY: ids * 3,
            EVENT_TIMESTAMP: [between] * len(ids) + [store.snapshot] * len(ids) + [store.observed] * len(ids),
            "Churn": store.churn["Churn"].tolist() * 3,
            "which": ["older"] * len(ids) + ["newer"] * (2 * len(ids)),
        }
    )
    entities = rows.sample(frac=1.0, random_state=5).reset_index(drop=True)  # an order Feast does not keep
    entities[EVENT_TIMESTAMP] = pd.to_datetime(entities[EVENT_TIMESTAMP], utc=True)
    frame = feature_store.historical(store.repo, SERVICE, entities)

    assert len(frame) == len(entities)
    assert frame[ENTITY].tolist() == entities[ENTITY].tolist()
    assert (
        frame["which"].tolist() == entities["which"].tolist() and frame["Churn"].tolist() == entities["Churn"].tolist()
    )
    assert frame["tenure"].dtype == "int64" and frame["SeniorCitizen"].dtype == "int64"
    assert frame["MonthlyCharges"].dtype == "float64" and frame["TotalCharges"].dtype == "str"

    older = feature_frames(earlier_values(store.churn), store.snapshot - HISTORY_GAP)
    newer = feature_frames(store.churn, store.snapshot)
    for view, features in VIEWS.items():
        for which, source in (("older", older), ("newer", newer)):
            part = frame[frame["which"] == which]
            expected = source[view].set_index(ENTITY).loc[part[ENTITY], list(features)].reset_index(drop=True)
            pd.testing.assert_frame_equal(
                part[list(features)].reset_index(drop=True), expected, check_dtype=False, check_exact=True
            )
    # the two snapshots do differ, so the comparison above could tell them apart
    older_rows = frame[frame["which"] == "older"]
    newer_partner = newer["customer_profile"].set_index(ENTITY).loc[older_rows[ENTITY], "Partner"]
    assert (older_rows["Partner"].to_numpy() != newer_partner.to_numpy()).all()


def test_rows_feast_would_drop_are_refused_naming_the_count(store):
    ids = store.churn[ENTITY].tolist()[:4]
    too_early = store.snapshot - HISTORY_GAP - timedelta(seconds=1)  # before any feature row of the customer
    entities = pd.DataFrame(
        {
            ENTITY: ids,
            EVENT_TIMESTAMP: pd.to_datetime([store.observed, too_early, store.observed, too_early], utc=True),
            "Churn": ["No"] * 4,
        }
    )
    with pytest.raises(FeatureStoreError, match="dropped 2 of 4 entity rows") as caught:
        feature_store.historical(store.repo, SERVICE, entities)
    assert caught.value.exit_code == 2
    assert ids[1] in str(caught.value)


def test_online_reference_matches_the_newer_snapshot(store):
    ids = [*store.churn[ENTITY].tolist()[:25], "0000-NOONE"]
    online = feature_store.online_reference(store.repo, SERVICE, ids)
    assert online[ENTITY].tolist() == ids
    newer = feature_frames(store.churn, store.snapshot)
    stamp = int(pd.Timestamp(store.snapshot).timestamp())
    for view, features in VIEWS.items():
        expected = newer[view].set_index(ENTITY).loc[ids[:-1], list(features)].reset_index(drop=True)
        got = online.loc[: len(ids) - 2, list(features)].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=True)
        assert (online.loc[: len(ids) - 2, [f + "__ts" for f in features]] == stamp).all().all()
    unknown = online.iloc[-1]
    assert all(pd.isna(unknown[name]) for view in VIEWS.values() for name in view)
    assert unknown["tenure__ts"] == 0


def test_an_unknown_service_is_exit_2(store):
    with pytest.raises(FeatureStoreError, match=r"no feature service 'nope'.*churn_model") as caught:
        feature_store.describe(store.repo, "nope")
    assert caught.value.exit_code == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not REDIS_SERVER.exists(), reason="needs redis-server")
def test_the_team_configuration_on_redis_and_exit_3_when_it_is_down(store, tmp_path, monkeypatch):
    port = free_port()
    server = subprocess.Popen(
        [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "s3cret-pass", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        monkeypatch.setenv("FEAST_REDIS_CONNECTION", f"127.0.0.1:{port},password=s3cret-pass")
        team = ROOT / "featurestore" / "team" / "feature_store.yaml"
        feature_store.apply(store.repo, config=team)
        loaded = feature_store.materialize(store.repo, config=team, full=True)
        assert loaded["online_store"] == "redis" and loaded["rows"] == 2 * CUSTOMERS * len(VIEWS)
        ids = store.churn[ENTITY].tolist()[:10]
        on_redis = feature_store.online_reference(store.repo, SERVICE, ids, config=team)
        newer = feature_frames(store.churn, store.snapshot)
        for view, features in VIEWS.items():
            expected = newer[view].set_index(ENTITY).loc[ids, list(features)].reset_index(drop=True)
            pd.testing.assert_frame_equal(on_redis[list(features)], expected, check_dtype=False, check_exact=True)
    finally:
        server.terminate()
        server.wait(10)
    with pytest.raises(FeatureStoreError) as caught:
        feature_store.online_reference(store.repo, SERVICE, ids, config=team)
    assert caught.value.exit_code == 3
    assert "s3cret-pass" not in str(caught.value)


def cli(*args: str) -> int:
    return main(["features", *args, "--params", str(ROOT / "params.yaml")])


def test_features_cli_exit_codes(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(store.root)
    # build writes the views' files and the entity frame beside feature_store.entities, from data.path's CSV
    entities = tmp_path / "built" / "entities.parquet"
    build = ("build", "--set", "data.path=data/churn.csv", "--set", f"feature_store.entities={entities}")
    assert cli(*build, "--snapshot", store.snapshot.isoformat()) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["rows"] == {"customer_profile": CUSTOMERS, "customer_account": CUSTOMERS, "entities": CUSTOMERS}
    assert pd.read_parquet(entities)[ENTITY].tolist() == store.churn[ENTITY].tolist()
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert cli("materialize") == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["rows"] == 0 and "| customer_account |" in summary.read_text()
    assert cli("build", "--set", "data.path=data/none.csv") == 2
    assert cli("materialize", "--end", "yesterday") == 2
    assert cli("materialize", "--config", str(tmp_path / "absent.yaml")) == 2
    monkeypatch.setenv("FEAST_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    assert cli("materialize") == 3
    assert "Feast environment missing" in capsys.readouterr().err


def test_the_job_answers_one_json_object_with_its_exit_code(store):
    done = subprocess.run(
        [str(feature_store.feast_python()), str(ROOT / "featurestore" / "job.py"), "describe",
         "--repo", str(store.repo), "--service", "nope"],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert done.returncode == 2
    assert "no feature service 'nope'" in json.loads(done.stdout)["error"]
    assert len(done.stdout.strip().splitlines()) == 1
