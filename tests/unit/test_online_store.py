"""The API's own reads of Feast's online store equal Feast's `get_online_features`, on SQLite and a real Redis.

A tiny Feast repository is built in a temporary folder (FEAST.md's names: project churn, entity customer, views
customer_profile and customer_account, service churn_model), applied and materialized by Feast itself in
build/feast-venv, to SQLite and to a redis-server started for this module. Then api/model/online_store.py, which
imports no Feast, reads the same ids: known, unknown, one only in one view, one with a null and a blank value.
`build_feast_store` and `RedisServer` are shared with tests/api/test_feature_lookup.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from api.model.online_store import (
    ID_PATTERN,
    Lookup,
    RedisStore,
    ServiceSpec,
    SqliteStore,
    StoreUnavailable,
    Unreadable,
    Value,
    View,
    decode_value,
    entity_key,
    id_problem,
    open_store,
    redis_field,
    stored_value,
)
from pipeline.core.churn_data import generate_churn

from ..conftest import ROOT

FEAST_PYTHON = ROOT / "build" / "feast-venv" / "bin" / "python"
REDIS_SERVER = Path("/usr/bin/redis-server")
PROFILE = [
    *("gender", "SeniorCitizen", "Partner", "Dependents", "PhoneService", "MultipleLines", "InternetService"),
    *("OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV", "StreamingMovies"),
]
ACCOUNT = ["tenure", "Contract", "PaperlessBilling", "PaymentMethod", "MonthlyCharges", "TotalCharges"]
DTYPES = {"SeniorCitizen": "Int64", "tenure": "Int64", "MonthlyCharges": "Float64"}  # the rest String
PARTIAL, STALE, NULLS, UNKNOWN = "PARTIAL-0001", "STALE-0001", "NULL-0001", "NOPE-0000"
STALE_DAYS = 40  # the stale customer's account row; the account view's max age below is 30 days
MAX_AGE_S = {"customer_profile": 90 * 86400, "customer_account": 30 * 86400}

NEEDS = "needs build/feast-venv (make feast) and redis-server"
needs_feast = pytest.mark.skipif(not FEAST_PYTHON.exists() or not REDIS_SERVER.exists(), reason=NEEDS)

# Runs in build/feast-venv: the definitions (FEAST.md's names), apply, materialize, and Feast's own online read.
FEAST_SCRIPT = r"""
import json, sys
from datetime import datetime, timedelta, timezone
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

repo, data, cmd = sys.argv[1], sys.argv[2], sys.argv[3]
TYPES = {"Int64": Int64, "Float64": Float64, "String": String}
spec = json.load(open(f"{data}/views.json"))
customer = Entity(name="customer", join_keys=["customerID"], value_type=ValueType.STRING)
views = [
    FeatureView(
        name=name,
        entities=[customer],
        ttl=timedelta(days=3650),
        schema=[Field(name=f, dtype=TYPES[t]) for f, t in features],
        source=FileSource(name=f"{name}_source", path=f"{data}/{name}.parquet", timestamp_field="event_timestamp",
                          created_timestamp_column="created"),
        online=True,
    )
    for name, features in spec.items()
]
service = FeatureService(name="churn_model", features=views)
store = FeatureStore(repo_path=repo)
if cmd == "build":
    store.apply([customer, *views, service])
    now = datetime.now(timezone.utc)
    store.materialize(start_date=now - timedelta(days=400), end_date=now + timedelta(minutes=1))
    print("{}")
else:
    ids = json.loads(sys.stdin.read())
    answer = store.get_online_features(
        features=store.get_feature_service("churn_model"), entity_rows=[{"customerID": i} for i in ids]
    ).to_dict()
    print(json.dumps(answer, default=str))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on a free port, no persistence; stop() and start() again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(REDIS_SERVER),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@dataclass(frozen=True)
class FeastStore:
    """A materialized Feast store: the SQLite file, the Redis server, the data, and how to ask Feast itself."""

    folder: Path
    sqlite_path: Path
    redis: RedisServer
    frame: pd.DataFrame  # generate_churn's rows (customerID and raw features) the store was built from
    spec: ServiceSpec

    def feast_online(self, backend: str, ids: list[str]) -> dict[str, list[object]]:
        """Feast's own get_online_features for `ids` (backend: sqlite or redis)."""
        done = subprocess.run(
            [
                str(FEAST_PYTHON),
                str(self.folder / "feast_script.py"),
                str(self.folder / backend),
                str(self.folder / "data"),
                "online",
            ],
            input=json.dumps(ids),
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


def service_record(stale: str = "refuse") -> dict[str, object]:
    """feature_service.json for the store built here (FEAST.md's shape)."""
    features = {"customer_profile": PROFILE, "customer_account": ACCOUNT}
    return {
        "service": "churn_model",
        "entity_field": "customerID",
        "views": [
            {"name": view, "features": [[f, DTYPES.get(f, "String")] for f in names], "max_age_s": MAX_AGE_S[view]}
            for view, names in features.items()
        ],
        "definitions_hash": "0" * 64,
        "stale": stale,
    }


def build_feast_store(folder: Path, customers: int = 120, seed: int = 3) -> FeastStore:
    """generate_churn's customers (plus PARTIAL, STALE and NULLS) applied and materialized by Feast, twice."""
    frame = generate_churn(customers, seed)
    now = datetime.now(UTC)
    recent = now - timedelta(hours=1)
    data = folder / "data"
    data.mkdir(parents=True)
    extra = frame.iloc[:3].copy()
    extra["customerID"] = [PARTIAL, STALE, NULLS]
    extra.loc[extra.customerID == NULLS, "MonthlyCharges"] = np.nan
    extra.loc[extra.customerID == NULLS, "TotalCharges"] = " "
    rows = pd.concat([frame, extra], ignore_index=True)
    stamps = pd.Series([recent] * len(rows))
    for view, names in (("customer_profile", PROFILE), ("customer_account", ACCOUNT)):
        table = rows[["customerID", *names]].copy()
        table["event_timestamp"] = stamps.to_numpy()
        if view == "customer_account":
            table.loc[table.customerID == STALE, "event_timestamp"] = now - timedelta(days=STALE_DAYS)
            table = table[table.customerID != PARTIAL]
        table["created"] = table["event_timestamp"]
        table["event_timestamp"] = pd.to_datetime(table["event_timestamp"], utc=True)
        table["created"] = pd.to_datetime(table["created"], utc=True)
        table.to_parquet(data / f"{view}.parquet", index=False)
    views = {"customer_profile": PROFILE, "customer_account": ACCOUNT}
    (data / "views.json").write_text(
        json.dumps({v: [[f, DTYPES.get(f, "String")] for f in n] for v, n in views.items()})
    )
    (folder / "feast_script.py").write_text(FEAST_SCRIPT)
    redis = RedisServer(folder)
    redis.start()
    for backend, online in (
        ("sqlite", f"  type: sqlite\n  path: {folder / 'online.db'}"),
        ("redis", f'  type: redis\n  connection_string: "127.0.0.1:{redis.port}"'),
    ):
        repo = folder / backend
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(
            f"project: churn\nregistry: {repo / 'registry.db'}\nprovider: local\nonline_store:\n{online}\n"
            "offline_store:\n  type: file\nentity_key_serialization_version: 3\n"
        )
        subprocess.run(
            [str(FEAST_PYTHON), str(folder / "feast_script.py"), str(repo), str(data), "build"],
            capture_output=True,
            check=True,
            timeout=600,
        )
    return FeastStore(folder, folder / "online.db", redis, rows, ServiceSpec.parse(service_record()))


@pytest.fixture(scope="module")
def feast_store(tmp_path_factory):
    if not FEAST_PYTHON.exists() or not REDIS_SERVER.exists():
        pytest.skip(NEEDS)
    store = build_feast_store(tmp_path_factory.mktemp("feast"))
    yield store
    store.redis.stop()
    shutil.rmtree(store.folder, ignore_errors=True)


def same(ours: object, feasts: object) -> bool:
    if isinstance(ours, float) and isinstance(feasts, float):
        return math.isclose(ours, feasts, rel_tol=0, abs_tol=1e-12) or (math.isnan(ours) and math.isnan(feasts))
    return ours == feasts


@needs_feast
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_reads_equal_feasts_own(feast_store, backend):
    """Known ids, an unknown one, one only in the profile view, a null and a blank: value for value, Feast's."""
    known = feast_store.frame.customerID.tolist()[:40]
    ids = [*known, UNKNOWN, PARTIAL, NULLS, STALE]
    reference = feast_store.feast_online(backend, ids)
    store = open_store(feast_store.redis.url if backend == "redis" else f"sqlite://{feast_store.sqlite_path}", 1.0)
    spec = feast_store.spec
    rows = store.read("churn", "customerID", spec.views, ids)
    compared = 0
    for i, entity in enumerate(ids):
        for view in spec.views:
            row = rows[view.name].get(entity)
            for name, _ in view.features:
                ours = None if row is None else row.values.get(name)
                assert same(ours, reference[name][i]), (backend, entity, name, ours, reference[name][i])
                compared += 1
    assert compared == len(ids) * len(spec.feature_names)
    assert all(UNKNOWN not in rows[v.name] for v in spec.views)
    assert PARTIAL in rows["customer_profile"] and PARTIAL not in rows["customer_account"]
    assert rows["customer_account"][NULLS].values["MonthlyCharges"] is None  # stored null, not absent
    age = datetime.now(UTC) - cast(datetime, rows["customer_account"][STALE].event_ts)
    assert timedelta(days=STALE_DAYS - 1) < age < timedelta(days=STALE_DAYS + 1)
    store.close()


@needs_feast
def test_value_decoder_reads_feasts_encoding(feast_store):
    """Feast's own ValueProto bytes for each scalar type decode to the same Python value here."""
    script = (
        "import sys, json\n"
        "from feast.protos.feast.types.Value_pb2 import Value, Null\n"
        "vals = [Value(string_val='Yes'), Value(string_val=''), Value(int64_val=-7), Value(int32_val=3),"
        " Value(double_val=29.85), Value(float_val=1.5), Value(bool_val=True), Value(bytes_val=b'\\x00x'),"
        " Value(unix_timestamp_val=1700000000), Value(null_val=Null.NULL), Value()]\n"
        "print(json.dumps([v.SerializeToString().hex() for v in vals]))\n"
    )
    out = subprocess.run([str(FEAST_PYTHON), "-c", script], capture_output=True, text=True, check=True, timeout=120)
    decoded = [decode_value(bytes.fromhex(h)) for h in json.loads(out.stdout)]
    assert decoded == ["Yes", "", -7, 3, 29.85, 1.5, True, b"\x00x", 1700000000, None, None]


def test_value_decoder_refuses_what_it_does_not_know():
    """A list value (field 12, string_list_val) is not taken for a null."""
    from api.model.online_store import Unreadable

    assert decode_value(Value(string_val="a").SerializeToString()) == "a"
    with pytest.raises(Unreadable):
        decode_value(bytes([0x62, 0x03, 0x0A, 0x01, 0x61]))  # field 12, a StringList ["a"]


def test_entity_key_layout():
    """Feast's serialized key, version 3, for one STRING join key (the research's verified layout)."""
    key = entity_key("customerID", "7590-VHVEG")
    assert key[:4] == (1).to_bytes(4, "little") and key.endswith(b"7590-VHVEG") and b"customerID" in key


@pytest.mark.parametrize(
    "value", [None, 7, 1.5, "", "x" * 65, "a\x00b", "é", "Ωmega", "x\r\nFLUSHALL", "a b", "a;DROP", "../x", "a\n"]
)
def test_hostile_ids_are_refused(value):
    assert id_problem(value) is not None


@pytest.mark.parametrize("value", ["7590-VHVEG", "a", "x" * 64, "a.b:c_d-e"])
def test_plain_ids_pass(value):
    assert id_problem(value) is None and ID_PATTERN.fullmatch(value)


def test_bad_service_records_are_refused():
    from api.model.online_store import BadService

    good = service_record()
    assert ServiceSpec.parse(good).feature_names[0] == "gender"
    for broken in (
        {**good, "stale": "maybe"},
        {**good, "views": [{**good["views"][0], "name": "x; DROP"}]},  # type: ignore[index]
        {**good, "views": [{**good["views"][0], "features": [["a", "Array(String)"]]}]},  # type: ignore[index]
        {k: v for k, v in good.items() if k != "views"},
    ):
        with pytest.raises(BadService):
            ServiceSpec.parse(broken)


def test_unreachable_stores_fail_fast_and_named():
    """Nothing listens: StoreUnavailable within the timeout, its message without the password."""
    port = free_port()
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0", 0.05)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.read("churn", "customerID", ServiceSpec.parse(service_record()).views, ["a"])
    assert time.monotonic() - started < 0.5
    assert caught.value.reason == "unreachable" and "hunter2" not in caught.value.message
    missing = SqliteStore("/nonexistent/online.db", 0.05)
    with pytest.raises(StoreUnavailable):
        missing.read("churn", "customerID", ServiceSpec.parse(service_record()).views, ["a"])


@needs_feast
def test_lookup_timing(feast_store):
    """One-record reads, direct, in a loop: p50 and p99 printed (run with -s to see them)."""
    spec = feast_store.spec
    ids = feast_store.frame.customerID.tolist()[:100]
    for name, url in (("sqlite", f"sqlite://{feast_store.sqlite_path}"), ("redis", feast_store.redis.url)):
        store = open_store(url, 1.0)
        for entity in ids[:50]:
            store.read("churn", "customerID", spec.views, [entity])
        took = []
        for i in range(2000):
            started = time.perf_counter()
            store.read("churn", "customerID", spec.views, [ids[i % len(ids)]])
            took.append(time.perf_counter() - started)
        p50, p99 = np.percentile(took, [50, 99]) * 1000
        print(f"direct one-record lookup {name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms (n=2000)", file=sys.stderr)
        assert p50 < 50
        store.close()


# --- Bad bytes in the store, shared views, slow answers, busy pools, passwords (the attacker review) ----------------

NOW = datetime.now(UTC)


def _value(**member: object) -> bytes:
    return Value(**member).SerializeToString()


# id (a customer of the store) -> (view, feature, stored bytes): each makes that one feature unreadable.
BAD_VALUES = {
    "corrupt blob": ("customer_account", "MonthlyCharges", b"\xff\xff\xff"),
    "string not UTF-8": ("customer_profile", "gender", b"\x12\x02\xff\xfe"),
    "a list": ("customer_profile", "gender", bytes([0x62, 0x03, 0x0A, 0x01, 0x61])),
    "text for Float64": ("customer_account", "MonthlyCharges", _value(string_val="5")),
    "NaN for Float64": ("customer_account", "MonthlyCharges", _value(double_val=float("nan"))),
    "inf for Float64": ("customer_account", "MonthlyCharges", _value(double_val=float("inf"))),
    "int for String": ("customer_account", "Contract", _value(int64_val=5)),
    "bool for Int64": ("customer_account", "tenure", _value(bool_val=True)),
}


@dataclass(frozen=True)
class Corrupted:
    """A copy of the built store with bad bytes written in: where it is, and what each id should come back as."""

    url: str
    project: str
    good: str  # an id left as Feast wrote it
    unreadable: dict[str, set[str]]  # id -> the features that cannot be read
    future: str  # an id whose account view is stamped a day ahead
    old_feature: str | None  # an id one of whose account features alone is 40 days old (SQLite's per-feature times)


def _stamp(when: datetime) -> bytes:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp.SerializeToString()


def corrupt_copy(store: FeastStore, backend: str, folder: Path) -> Corrupted:
    """Bad bytes written straight into a copy of the store (SQLite: a copied file; Redis: project `corrupt`)."""
    ids = iter(store.frame.customerID.tolist()[60:])
    bad = {next(ids): case for case in BAD_VALUES.values()}
    good, future = next(ids), next(ids)
    expected = {entity: {feature} for entity, (_, feature, _) in bad.items()}
    if backend == "sqlite":
        path = folder / "corrupt.db"
        shutil.copy(store.sqlite_path, path)
        db = sqlite3.connect(path)
        where = "WHERE entity_key = ? AND feature_name = ?"
        for entity, (view, feature, raw) in bad.items():
            db.execute(f"UPDATE churn_{view} SET value = ? {where}", (raw, entity_key("customerID", entity), feature))
        null_ts, huge_ts, old = next(ids), next(ids), next(ids)
        for entity, event_ts in ((null_ts, None), (huge_ts, 10**15), (old, str(NOW - timedelta(days=40)))):
            db.execute(f"UPDATE churn_customer_account SET event_ts = ? {where}",
                       (event_ts, entity_key("customerID", entity), "tenure"))  # fmt: skip
        ahead = (NOW + timedelta(days=1)).replace(tzinfo=None)
        db.execute("UPDATE churn_customer_account SET event_ts = ? WHERE entity_key = ?",
                   (str(ahead), entity_key("customerID", future)))  # fmt: skip
        db.commit()
        db.close()
        expected |= {null_ts: {"tenure"}, huge_ts: {"tenure"}}
        return Corrupted(f"sqlite://{path}", "churn", good, expected, future, old)
    import redis as redis_py

    client: Any = redis_py.Redis.from_url(store.redis.url)
    bad_ts, huge_ts, wrong_type = next(ids), next(ids), next(ids)
    for entity in [*bad, good, future, bad_ts, huge_ts]:
        client.delete(entity_key("customerID", entity) + b"corrupt")
        client.hset(entity_key("customerID", entity) + b"corrupt",
                    mapping=client.hgetall(entity_key("customerID", entity) + b"churn"))  # fmt: skip
    for entity, (view, feature, raw) in bad.items():
        client.hset(entity_key("customerID", entity) + b"corrupt", redis_field(view, feature), raw)
    for entity, stamp in ((bad_ts, b"\xff"), (huge_ts, Timestamp(seconds=10**15).SerializeToString()),
                          (future, _stamp(NOW + timedelta(days=1)))):  # fmt: skip
        client.hset(entity_key("customerID", entity) + b"corrupt", b"_ts:customer_account", stamp)
    client.set(entity_key("customerID", wrong_type) + b"corrupt", b"not a hash")  # WRONGTYPE for HMGET
    expected |= {bad_ts: set(ACCOUNT), huge_ts: set(ACCOUNT), wrong_type: set(PROFILE + ACCOUNT)}
    return Corrupted(store.redis.url, "corrupt", good, expected, future, None)


def unreadable_in(rows: dict, entity: str) -> set[str]:
    return {
        name
        for view_rows in rows.values()
        if entity in view_rows
        for name, value in view_rows[entity].values.items()
        if isinstance(value, Unreadable)
    }


@needs_feast
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_bad_bytes_are_that_features_problem_not_the_stores(feast_store, backend, tmp_path):
    """Corrupt blobs, bad UTF-8, lists, wrong dtypes, NaN/inf, bad event times, a key of the wrong Redis type: each
    read as exactly those features unreadable, every other id and feature read as Feast wrote it."""
    bad = corrupt_copy(feast_store, backend, tmp_path)
    store = open_store(bad.url, 1.0)
    ids = [*bad.unreadable, bad.good, UNKNOWN]
    rows = store.read(bad.project, "customerID", feast_store.spec.views, ids)
    for entity, features in bad.unreadable.items():
        assert unreadable_in(rows, entity) == features, entity
    assert unreadable_in(rows, bad.good) == set() and all(UNKNOWN not in r for r in rows.values())
    reference = open_store(feast_store.redis.url if backend == "redis" else f"sqlite://{feast_store.sqlite_path}", 1.0)
    clean = reference.read("churn", "customerID", feast_store.spec.views, [bad.good])
    for view in feast_store.spec.views:
        assert rows[view.name][bad.good].values == clean[view.name][bad.good].values
    store.close()
    reference.close()


@needs_feast
def test_sqlite_row_time_is_its_oldest_features(feast_store, tmp_path):
    """One feature 40 days old among recent ones: the view's time is the old one (it is what may be stale)."""
    bad = corrupt_copy(feast_store, "sqlite", tmp_path)
    assert bad.old_feature is not None
    store = open_store(bad.url, 1.0)
    rows = store.read("churn", "customerID", feast_store.spec.views, [bad.old_feature])
    age = NOW - cast(datetime, rows["customer_account"][bad.old_feature].event_ts)
    assert timedelta(days=39) < age < timedelta(days=41)
    store.close()


@needs_feast
def test_one_redis_store_reads_each_services_own_fields(feast_store):
    """Two services naming the same view with different features (a canary and production) read through one store:
    each gets its own features' values, not the other's under its names."""
    store = RedisStore(feast_store.redis.url, 1.0)
    first = View("customer_account", (("tenure", "Int64"), ("MonthlyCharges", "Float64")), 86400.0)
    second = View("customer_account", (("MonthlyCharges", "Float64"), ("tenure", "Int64")), 86400.0)
    entity = feast_store.frame.customerID.iloc[5]
    expected = feast_store.frame.set_index("customerID").loc[entity]
    for view in (first, second, first):
        values = store.read("churn", "customerID", [view], [entity])["customer_account"][entity].values
        assert values["tenure"] == expected["tenure"]
        assert values["MonthlyCharges"] == pytest.approx(expected["MonthlyCharges"])
    store.close()


@needs_feast
def test_a_slow_answer_is_served_and_holds_no_one_else_up(feast_store):
    """A read that answers after the lookup timeout (here every read: 1 µs) is served, and so is the next."""
    lookup = Lookup(SqliteStore(str(feast_store.sqlite_path), 1e-6), "churn", 1e-6)
    ids = feast_store.frame.customerID.tolist()[:200]
    for _ in range(2):
        rows = lookup.read(feast_store.spec, feast_store.spec.views, ids)
        assert len(rows["customer_profile"]) == len(ids)
    assert lookup.down is None and lookup.health() is None


@needs_feast
def test_every_connection_busy_is_a_503_for_that_request_only(feast_store):
    """No free connection within the timeout: 503 busy, the store not held down; a free one: served at once."""
    store = RedisStore(feast_store.redis.url, 0.05, max_connections=1)
    lookup = Lookup(store, "churn", 0.05)
    entity = feast_store.frame.customerID.iloc[0]
    store._slots.acquire()  # the one connection in use by another request
    try:
        with pytest.raises(StoreUnavailable) as caught:
            lookup.read(feast_store.spec, feast_store.spec.views, [entity])
        assert caught.value.reason == "busy" and not caught.value.down
        assert lookup.down is None and lookup.health() is None
    finally:
        store._slots.release()
    assert entity in lookup.read(feast_store.spec, feast_store.spec.views, [entity])["customer_profile"]
    store.close()


@needs_feast
def test_sqlite_close_closes_every_threads_connection(feast_store):
    """Reads on three threads open three connections; close() closes all of them (no file left open)."""
    import threading

    store = SqliteStore(str(feast_store.sqlite_path), 1.0)
    spec = feast_store.spec

    def open_files() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in os.listdir(fds) if _points_at(fds / fd, feast_store.sqlite_path))

    before = open_files()
    threads = [threading.Thread(target=store.read, args=("churn", "customerID", spec.views, ["a"])) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert open_files() == before + 3
    store.close()
    assert open_files() == before


def _points_at(link: Path, target: Path) -> bool:
    try:
        return Path(os.readlink(link)) == target
    except OSError:
        return False


SECRETS = ["p@ss", "a/b", "x y", "q'uote", "hunter2"]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_redis_password_is_in_no_message(secret):
    """Whatever the password holds: the description and a failed read's message name host, port and db only."""
    port = free_port()
    for url in (f"redis://:{secret}@127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/0?password={secret}"):
        try:
            store = open_store(url, 0.05)
        except ValueError as exc:  # unparseable as written: the setting named, not its text
            assert "FEATURE_STORE_URL" in str(exc) and secret not in str(exc) and exc.__cause__ is None
            assert exc.__suppress_context__
            continue
        assert store.description == f"redis online store at 127.0.0.1:{port}/0"
        with pytest.raises(StoreUnavailable) as caught:
            store.read("churn", "customerID", ServiceSpec.parse(service_record()).views, ["a"])
        assert caught.value.reason == "unreachable" and secret not in caught.value.message


def test_an_unparseable_redis_url_names_the_setting_not_its_text():
    for url in ("redis://:s3cret/x@127.0.0.1:6379/0", "redis://:s3cret@[::1:6379/0", "redis+x://:s3cret@h"):
        with pytest.raises(ValueError) as caught:
            open_store(url, 0.05)
        assert "FEATURE_STORE_URL" in str(caught.value) and "s3cret" not in str(caught.value)
        assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (True, "double", "unreadable"),  # a boolean is not the number 1.0
        ("nan", "double", "unreadable"),
        ("inf", "double", "unreadable"),
        (b"\xff\xfe", "double", "unreadable"),  # not UTF-8
        ("29.85", "double", 29.85),
        (" ", "double", None),
        (5, "string", "5"),  # a Feast Int64 read as a category: the CSV path's text of it
        (1.5, "string", "unreadable"),
        (b"x", "string", "unreadable"),
        (1, "boolean", "unreadable"),
    ],
)
def test_stored_values_become_what_a_client_would_send(value, kind, expected):
    from api.model.online_store import _UNREADABLE, _as_request
    from api.model.schema import FeatureSpec

    got = _as_request(value, FeatureSpec("f", kind))
    assert (got is _UNREADABLE) if expected == "unreadable" else got == expected


def test_decoding_checks_the_dtype_and_refuses_non_finite_numbers():
    assert decode_value(_value(int64_val=3), "Float64") == 3  # an integer is exact for a float feature
    assert decode_value(_value(double_val=1.5), "Float64") == 1.5
    assert decode_value(_value(null_val=0), "Int64") is None
    for raw, dtype in (
        (_value(double_val=1.5), "Int64"),
        (_value(string_val="5"), "Int64"),
        (_value(bool_val=True), "Float64"),
        (_value(int64_val=5), "String"),
        (_value(float_val=float("-inf")), "Float32"),
        (b"\xff\xff", "String"),
    ):
        with pytest.raises(Unreadable):
            decode_value(raw, dtype)


@pytest.mark.parametrize("raw", ["abc", 5, 1.5])
def test_a_stored_value_that_is_not_bytes_is_unreadable_not_a_crash(raw):
    """SQLite's columns take any type: text or a number in `value` is that feature's problem, never a 500."""
    with pytest.raises(Unreadable, match="not a readable Feast value"):
        decode_value(raw, "Float64")  # type: ignore[arg-type]
    assert isinstance(stored_value(raw, "Float64"), Unreadable)  # type: ignore[arg-type]
