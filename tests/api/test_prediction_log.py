"""The prediction log: ids on every answer, segments written off the request path, what a stop or a crash keeps.

The API runs as a real uvicorn process (`serving`), the conftest's tiny model
trained in the child, records carrying a customer id (ENTITY_ID_FIELD).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from api import prediction_log
from api.app import create_app
from api.holder import ModelHolder
from api.log_layout import PREDICTION_SCHEMA
from api.metrics import ServiceMetrics
from api.prediction_log import PredictionLog
from api.release.traffic import Target, Traffic
from api.settings import Settings, SettingsError
from pipeline.runtime.processes import free_port, stop, wait_for

from ..conftest import ROOT
from ..unit.test_online_store import FEAST_PYTHON, REDIS_SERVER
from .conftest import make_model
from .test_canary import serving as rollout_serving

SERVE = """
import os, sys
os.environ.setdefault("OMP_NUM_THREADS", "1")
import uvicorn
from api.app import create_app
from api.holder import ModelHolder
from api.http_protocol import PROTOCOL
from api.settings import Settings, SettingsError
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.train import train
from tests.api.conftest import make_model

result = train(prepare(generate_churn(800, 3).astype(str), DataParams()), ModelParams(), test_size=0.25, seed=3)
model = make_model(result)
model.entity_field = "customerID"
model.__post_init__()  # rebuilt with the customer field accepted
app = create_app(ModelHolder(model=model), Settings.from_env())
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, http=PROTOCOL, log_level="warning")
"""
HEX_ID = re.compile(r"[0-9a-f]{32}")
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}\.[0-9a-f]{8}")  # a client's X-Request-Id made unique


class Served:
    """A real API process and its log folder."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log


@contextlib.contextmanager
def serving(log: str | Path, **env: str) -> Iterator[Served]:
    """The tiny model served by `python -c SERVE` on a free port, logging to `log`; stopped (SIGTERM) at the end."""
    port = free_port()
    variables = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREDICTION_LOG_URI": str(log),
        "DECISION_CLIENT_BUDGET": "1000000",
        **env,
    }
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], env=variables, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/ready", 120, process)
        yield Served(process, url, Path(log))
    finally:
        if process.poll() is None:
            stop(process)


def customer_records(records: list[dict], prefix: str = "c") -> list[dict]:
    return [{**record, "customerID": f"{prefix}{i}"} for i, record in enumerate(records)]


def logged(folder: Path) -> pa.Table:
    """Every prediction segment under `folder` (names ending .parquet, none a dot-name), in one table."""
    paths = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables) if tables else PREDICTION_SCHEMA.empty_table()


def wait_logged(folder: Path, ids: set[str], within_s: float = 30) -> dict[str, dict]:
    """The logged rows by prediction id once every one of `ids` is there."""
    deadline = time.monotonic() + within_s
    while True:
        rows = {row["prediction_id"]: row for row in logged(folder).to_pylist()}
        if ids <= rows.keys() or time.monotonic() > deadline:
            assert ids <= rows.keys(), f"{len(ids - rows.keys())} ids never logged"
            return rows
        time.sleep(0.1)


def metric(url: str, name: str) -> float:
    found = re.search(rf"^{name} ([\d.e+]+)$", httpx.get(url + "/metrics").text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def wait_metric(url: str, name: str, at_least: float, within_s: float = 30) -> float:
    deadline = time.monotonic() + within_s
    while (value := metric(url, name)) < at_least:
        assert time.monotonic() < deadline, f"{name} stayed at {value}"
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Served]:
    """One replica logging to a folder, flushing often."""
    with serving(tmp_path_factory.mktemp("log"), PREDICTION_LOG_FLUSH_S="0.2") as served:
        yield served


def test_every_answer_carries_ids_and_its_rows_are_logged_as_answered(api, records):
    # given: records naming customers, a client request id, and one request without any
    batch = customer_records(records[:3])
    # when: /predict answers them
    with httpx.Client(base_url=api.url) as http:
        named = http.post("/predict", json={"records": batch}, headers={"X-Request-Id": "order-42:a.b_c"})
        anonymous = http.post("/predict", json={"records": batch[:1]})
    # then: each record's id is the request's id and its index, the request's id (the client's, a dot, 8 random
    # hex digits) in the header
    request = named.headers["X-Prediction-Id"]
    assert named.status_code == 200 and CLIENT_ID.fullmatch(request) and request.startswith("order-42:a.b_c.")
    body = named.json()
    assert body["prediction_ids"] == [f"{request}-0", f"{request}-1", f"{request}-2"]
    assert set(body) == {"model_version", "predictions", "probabilities", "prediction_ids"}  # nothing else changed
    assert HEX_ID.fullmatch(anonymous.headers["X-Prediction-Id"])
    assert anonymous.json()["prediction_ids"] == [anonymous.headers["X-Prediction-Id"] + "-0"]
    # and: each record's row holds the answer, its version, role, customer and the features it was given
    rows = wait_logged(api.log, set(body["prediction_ids"]))
    for i, pid in enumerate(body["prediction_ids"]):
        row = rows[pid]
        assert (row["version"], row["role"], row["model"]) == ("7", "production", "churn")
        assert row["score"] == body["probabilities"][i] and row["label"] == body["predictions"][i]
        assert row["entity_id"] == f"c{i}"
        features = json.loads(row["features"])
        assert features["tenure"] == batch[i]["tenure"] and features["Contract"] == batch[i]["Contract"]
        assert row["time"].tzinfo is not None


def test_a_bad_request_id_is_replaced_and_invocations_keep_mlflows_body(api, records):
    # given: request ids that are too long or hold characters outside [A-Za-z0-9._:-]
    with httpx.Client(base_url=api.url) as http:
        for bad in ("x" * 101, "a b", "ü".encode(), "../x", ""):
            # when: a record is sent with one
            answer = http.post("/predict", json={"records": records[:1]}, headers={"X-Request-Id": bad})
            # then: a random id answers instead
            assert HEX_ID.fullmatch(answer.headers["X-Prediction-Id"]), bad
        # when: /invocations answers MLflow's scoring protocol
        invoked = http.post("/invocations", json={"dataframe_records": records[:2]}, headers={"X-Request-Id": "inv-1"})
        refused = http.post("/predict", json={"records": [{"tenure": "many"}]})
    # then: its body is MLflow's, the id only in the header, and its rows are logged as /predict's
    assert invoked.json() == {"predictions": invoked.json()["predictions"]}
    invoked_id = invoked.headers["X-Prediction-Id"]
    assert CLIENT_ID.fullmatch(invoked_id) and invoked_id.startswith("inv-1.")
    rows = wait_logged(api.log, {f"{invoked_id}-0", f"{invoked_id}-1"})
    assert [rows[f"{invoked_id}-{i}"]["label"] for i in range(2)] == invoked.json()["predictions"]
    # and: a refused request has no id and nothing logged
    assert refused.status_code == 422 and "X-Prediction-Id" not in refused.headers


def test_a_reused_request_id_still_gives_unique_prediction_ids(api, records):
    # given: two clients (or one retrying) sending the same X-Request-Id
    same = {"X-Request-Id": "order-7"}
    # when: both requests are answered, by /predict and /invocations
    with httpx.Client(base_url=api.url) as http:
        answers = [http.post("/predict", json={"records": records[:2]}, headers=same) for _ in range(2)]
        answers.append(http.post("/invocations", json={"dataframe_records": records[:1]}, headers=same))
    # then: each has an id of its own, every one starting with the client's id
    ids = [a.headers["X-Prediction-Id"] for a in answers]
    assert len(set(ids)) == 3 and all(CLIENT_ID.fullmatch(i) and i.startswith("order-7.") for i in ids)
    predicted = [pid for a in answers[:2] for pid in a.json()["prediction_ids"]]
    assert len(set(predicted)) == 4 and all(pid.startswith("order-7.") for pid in predicted)
    # and: the log holds each record once under its own id
    rows = wait_logged(api.log, {*predicted, f"{ids[2]}-0"})
    assert len(rows) == len(set(rows))


def test_sigterm_writes_every_answered_row_before_the_process_ends(tmp_path, records):
    # given: a replica whose timer never flushes within the test
    with serving(tmp_path, PREDICTION_LOG_FLUSH_S="3600") as api:
        with httpx.Client(base_url=api.url) as http:
            answers = [http.post("/predict", json={"records": records[: 1 + i % 3]}) for i in range(40)]
        answered = [pid for answer in answers for pid in answer.json()["prediction_ids"]]
        assert logged(tmp_path).num_rows == 0
        # when: it is told to stop
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(60) in (0, -signal.SIGTERM)  # uvicorn raises the signal again once shut down
    # then: every answered row is in the log, once
    ids = logged(tmp_path).column("prediction_id").to_pylist()
    assert sorted(ids) == sorted(answered) and len(set(ids)) == len(ids)


def test_sigkill_mid_traffic_loses_only_the_rows_answered_since_the_last_flush(tmp_path, records):
    # given: a replica flushing every 0.3 s, one client sending one-record requests one after another
    with serving(tmp_path, PREDICTION_LOG_FLUSH_S="0.3", PREDICTION_LOG_MAX_ROWS="100000") as api:
        answered: list[str] = []
        stopped = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=api.url, timeout=5) as http:
                while not stopped.is_set():
                    try:
                        answer = http.post("/predict", json={"records": records[:1]})
                    except httpx.HTTPError:
                        return
                    answered.extend(answer.json()["prediction_ids"])

        client = threading.Thread(target=hammer, daemon=True)
        client.start()
        try:
            # when: segments have been written, and it is killed while traffic goes on
            while logged(tmp_path).num_rows < 50:
                assert client.is_alive()
                time.sleep(0.05)
            os.kill(api.process.pid, signal.SIGKILL)
            api.process.wait(30)
        finally:
            stopped.set()
            client.join(30)
    # then: what is logged is exactly the answers up to a flush, each once; only the answers after it are lost
    ids = logged(tmp_path).column("prediction_id").to_pylist()
    assert len(set(ids)) == len(ids) and len(ids) >= 50
    in_flight = set(ids) - set(answered)  # logged, flushed, and killed before its answer reached the client
    assert len(in_flight) <= 1
    flushed = len(ids) - len(in_flight)
    assert set(answered[:flushed]) == set(ids) - in_flight  # one client: the flushed rows are the first answered
    lost = answered[flushed:]
    assert len(lost) <= 100_000  # and never more than PREDICTION_LOG_MAX_ROWS
    print(f"answered {len(answered)}, logged {len(ids)}, lost {len(lost)} (answered since the last flush)")


def test_a_failing_flush_fails_no_request_counts_keeps_up_to_the_bound_and_writes_them_later(tmp_path, records):
    # given: a log whose predictions folder cannot be created (a file stands in its place: even root cannot write),
    # and room for 5 rows
    (tmp_path / "predictions").write_text("in the way")
    with (
        serving(tmp_path, PREDICTION_LOG_FLUSH_S="0.2", PREDICTION_LOG_MAX_ROWS="5") as api,
        httpx.Client(base_url=api.url) as http,
    ):
        # when: 8 one-record requests are answered while flushes fail
        answers = [http.post("/predict", json={"records": records[:1]}) for _ in range(8)]
        # then: every request is answered, the failures counted, the rows past the bound dropped and counted
        assert [a.status_code for a in answers] == [200] * 8
        assert wait_metric(api.url, "prediction_log_flush_failures_total", 1) >= 1
        assert metric(api.url, "prediction_log_dropped_total") == 3
        assert metric(api.url, "prediction_log_written_total") == 0
        # when: the folder can be written again
        (tmp_path / "predictions").unlink()
        # then: the 5 kept rows are written by a later flush
        assert wait_metric(api.url, "prediction_log_written_total", 5) == 5
    ids = sorted(logged(tmp_path / "predictions").column("prediction_id").to_pylist())
    assert ids == sorted(a.json()["prediction_ids"][0] for a in answers[:5])


def test_a_flush_retried_after_its_write_landed_overwrites_its_segment(trained, records, tmp_path, monkeypatch):
    # given: a log holding 20 answered records, and a write that stores the segment then reports failure once
    # (the folder's fsync failed, or S3's response was lost after the object was stored)
    log = PredictionLog(str(tmp_path), replica="r1")
    model = make_model(trained)
    for i, record in enumerate(records):
        log.append(model, "production", f"req{i}", {k: [v] for k, v in record.items()}, ["No"], [0.1])
    real, calls = prediction_log.write_atomically, []

    def stored_then_failed(fs, path, data):
        real(fs, path, data)
        calls.append(path)
        if len(calls) == 1:
            raise OSError("fsync of the folder failed")

    monkeypatch.setattr(prediction_log, "write_atomically", stored_then_failed)
    # when: the first flush fails that way and the next one retries
    assert not log.flush() and log.flush()
    # then: the retry wrote the same segment again, so each row is in the log once
    assert calls[0] == calls[1]
    ids = logged(tmp_path / "predictions").column("prediction_id").to_pylist()
    assert sorted(ids) == sorted(f"req{i}-0" for i in range(len(records)))


def test_the_bytes_waiting_are_bounded_held_tables_included(trained, records, tmp_path):
    # given: a log with room for 100,000 rows but 5 MiB, and records whose customer id is 1 MiB long
    metrics = ServiceMetrics()
    (tmp_path / "predictions").write_text("in the way")  # flushes fail: their tables are held for a retry
    log = PredictionLog(str(tmp_path), max_rows=100_000, metrics=metrics, replica="r1", max_bytes=5 * 2**20)
    model = make_model(trained)
    model.entity_field = "customerID"
    huge = {**{k: [v] for k, v in records[0].items()}, "customerID": ["A" * 2**20]}

    def answer(count: int) -> None:
        for i in range(count):
            log.append(model, "production", f"req{i}", huge, ["No"], [0.1])

    def dropped() -> float:
        return metrics.registry.get_sample_value("prediction_log_dropped_total") or 0

    # when: 10 are answered (each holds its id twice: in its record's JSON and as the customer id)
    answer(10)
    # then: the log keeps 2 (about 2 MiB each), the rest are dropped and counted as past the row bound
    assert log.waiting == 2 and dropped() == 8 and 4 * 2**20 < log.waiting_bytes <= 5 * 2**20
    # when: a flush fails and holds their table, and 10 more are answered
    assert not log.flush()
    answer(10)
    # then: the held table still counts: every new one is dropped
    assert log.waiting == 2 and dropped() == 18
    # when: the folder can be written again
    (tmp_path / "predictions").unlink()
    # then: the held rows are written and the room is free again
    assert log.flush() and log.waiting_bytes == 0
    answer(1)
    assert log.waiting == 1


def test_a_flush_on_the_loop_lets_answers_in_between_and_a_stop_mid_build_loses_and_doubles_nothing(
    trained, records, tmp_path
):
    # given: 1,000 one-record answers and 3 of several records waiting, and the log's flush task on an event loop
    log = PredictionLog(str(tmp_path), flush_s=0.0, replica="r1")
    model = make_model(trained)
    one = {k: [v] for k, v in records[0].items()}
    several = {k: [r[k] for r in records] for k in records[0]}
    n = len(records)
    for i in range(1000):
        log.append(model, "production", f"one{i}", one, ["No"], [0.1])
    for i in range(3):
        log.append(model, "production", f"many{i}", several, ["No"] * n, [0.2] * n)
    steps: list[int] = []

    async def stopped_mid_build() -> None:
        task = asyncio.create_task(log.run())
        for step in range(4):  # the build yields after each slice: this loop runs between them
            await asyncio.sleep(0)
            steps.append(step)
            log.append(model, "production", f"during{step}", one, ["Yes"], [0.9])
        task.cancel()  # the app stopping, mid-build
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(stopped_mid_build())
    # then: answers were appended while it built, and the last flush (the lifespan's close) writes every row once
    assert steps == [0, 1, 2, 3]
    log.close()
    ids = logged(tmp_path).column("prediction_id").to_pylist()
    expected = [f"one{i}-0" for i in range(1000)] + [f"many{i}-{j}" for i in range(3) for j in range(n)]
    assert sorted(ids) == sorted(expected + [f"during{step}-0" for step in range(4)])
    assert log.waiting == 0


def test_a_flush_holding_a_large_batch_builds_it_off_the_loop_and_writes_every_row(
    trained, records, tmp_path, monkeypatch
):
    # given: a 400-record answer waiting beside one-record ones (its rows would hold the loop in one step)
    log = PredictionLog(str(tmp_path), flush_s=0.0, replica="r1")
    model = make_model(trained)
    big = {k: [r[k] for r in records] * (400 // len(records) + 1) for k in records[0]}
    big = {k: v[:400] for k, v in big.items()}
    log.append(model, "production", "big", big, ["No"] * 400, [0.3] * 400)
    for i in range(10):
        log.append(model, "production", f"one{i}", {k: [v] for k, v in records[0].items()}, ["No"], [0.1])
    built_on: list[str] = []
    tables = prediction_log._tables

    def observed(entries):
        built_on.append(threading.current_thread().name)
        return tables(entries)

    monkeypatch.setattr(prediction_log, "_tables", observed)

    async def one_flush() -> None:
        task = asyncio.create_task(log.run())
        while log.waiting:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(one_flush())
    # then: built by a worker thread, not the loop's, and every row written once
    assert built_on and built_on[0] != threading.main_thread().name
    ids = logged(tmp_path).column("prediction_id").to_pylist()
    assert sorted(ids) == sorted([f"big-{j}" for j in range(400)] + [f"one{i}-0" for i in range(10)])


def test_a_canary_answer_is_logged_in_the_canarys_role_and_version(trained, records, tmp_path):
    # given: a rollout sending every customer to canary version 2 (in process: the side is what matters here)
    holder, _ = rollout_serving(trained, Target("1", "2", Traffic("canary", "2", 100)))
    app = create_app(holder, Settings(prediction_log_uri=str(tmp_path), decision_client_budget=1_000_000))
    with TestClient(app) as client:
        # when: a customer's record is answered
        answer = client.post("/predict", json={"records": customer_records(records[:2], "k")})
    # then (the lifespan's end flushed): its rows say canary, version 2
    assert answer.json()["model_version"] == "2"
    rows = {r["prediction_id"]: r for r in logged(tmp_path).to_pylist()}
    assert {(r["role"], r["version"]) for r in rows.values()} == {("canary", "2")}
    assert [rows[p]["score"] for p in answer.json()["prediction_ids"]] == answer.json()["probabilities"]


def test_the_log_is_off_without_a_uri_yet_ids_are_given(trained, records, tmp_path):
    # given: no PREDICTION_LOG_URI
    with TestClient(create_app(ModelHolder(model=make_model(trained)), Settings())) as client:
        # when: a record is answered
        answer = client.post("/predict", json={"records": records[:1]}, headers={"X-Request-Id": "r1"})
    # then: it still has its id
    request = answer.headers["X-Prediction-Id"]
    assert (
        CLIENT_ID.fullmatch(request)
        and request.startswith("r1.")
        and answer.json()["prediction_ids"] == [f"{request}-0"]
    )


def test_features_are_the_values_as_sent_whatever_their_characters(trained, records, tmp_path):
    # given: string values holding quotes, brackets, backslashes and non-ASCII
    odd = ['Ma"le":[x]', 'a],"b', "back\\slash", "é[]}", ""]
    batch = [{**records[i], "gender": value} for i, value in enumerate(odd)]
    app = create_app(ModelHolder(model=make_model(trained)), Settings(prediction_log_uri=str(tmp_path)))
    with TestClient(app) as client:
        # when: answered one by one and all at once
        ones = [client.post("/predict", json={"records": [r]}) for r in batch]
        together = client.post("/predict", json={"records": batch})
    # then: each logged record's features are its values as decoded
    assert all(a.status_code == 200 for a in [*ones, together]), together.text
    rows = {r["prediction_id"]: r for r in logged(tmp_path).to_pylist()}
    answered = [a.json()["prediction_ids"][0] for a in ones] + together.json()["prediction_ids"]
    for pid, record in zip(answered, batch + batch, strict=True):
        features = json.loads(rows[pid]["features"])
        assert features["gender"] == record["gender"] and features["Contract"] == record["Contract"]
        assert features["tenure"] == record["tenure"]


@pytest.mark.skipif(not FEAST_PYTHON.exists() or not REDIS_SERVER.exists(), reason="needs build/feast-venv")
def test_records_read_by_id_are_logged_as_their_feature_store_reference(trained, tmp_path, tmp_path_factory):
    # given: a version trained from a feature service, its store on SQLite, and customers it knows
    from ..unit.test_online_store import build_feast_store
    from .test_feature_lookup import known, service_model

    built = build_feast_store(tmp_path_factory.mktemp("feast-log"), customers=800, seed=3)  # conftest's data
    try:
        ids, full = known(built, trained, 3)
        settings = Settings(feature_store_url=f"sqlite://{built.sqlite_path}", prediction_log_uri=str(tmp_path))
        with TestClient(create_app(ModelHolder(model=service_model(trained)), settings)) as client:
            # when: one record by id, then a batch mixing records by id and in full
            one = client.post("/predict", json={"records": [{"customerID": ids[0]}]})
            batch = [{"customerID": ids[1]}, {**full[2], "customerID": ids[2]}]
            mixed = client.post("/predict", json={"records": batch})
    finally:
        built.redis.stop()
    assert one.status_code == mixed.status_code == 200, mixed.text
    # then: a record by id is logged as the store's reference, a record in full as its values
    rows = {r["prediction_id"]: r for r in logged(tmp_path).to_pylist()}
    service = json.loads(rows[one.json()["prediction_ids"][0]]["features"])
    assert set(service) == {"feature_service", "entity_id"} and service["entity_id"] == ids[0]
    by_id, in_full = (rows[p] for p in mixed.json()["prediction_ids"])
    assert json.loads(by_id["features"]) == {"feature_service": service["feature_service"], "entity_id": ids[1]}
    assert json.loads(in_full["features"])["tenure"] == full[2]["tenure"] and in_full["entity_id"] == ids[2]
    assert [by_id["score"], in_full["score"]] == mixed.json()["probabilities"]


@pytest.mark.parametrize("uri", ["gs://bucket/log", "s3://", "http://example.com/log"])
def test_a_log_root_other_than_a_folder_or_s3_is_refused_by_name(monkeypatch, uri):
    # given: PREDICTION_LOG_URI naming something the log cannot write to
    monkeypatch.setenv("PREDICTION_LOG_URI", uri)
    # when: the settings are read, then: one line naming the variable
    with pytest.raises(SettingsError, match=r"PREDICTION_LOG_URI=.* must be a local folder or s3://BUCKET/PREFIX"):
        Settings.from_env()


def test_an_outcomes_token_still_holding_the_placeholder_stops_the_start(monkeypatch):
    monkeypatch.setenv("OUTCOMES_TOKEN", "change-me-outcomes-token")
    with pytest.raises(SettingsError, match="OUTCOMES_TOKEN") as refused:
        Settings.from_env()
    assert "change-me-outcomes-token" not in str(refused.value)


def test_the_byte_bound_is_read_from_the_environment_and_must_be_positive(monkeypatch):
    # given/when: PREDICTION_LOG_MAX_BYTES set, then unset, then 0
    monkeypatch.setenv("PREDICTION_LOG_MAX_BYTES", "1000")
    assert Settings.from_env().prediction_log_max_bytes == 1000
    monkeypatch.delenv("PREDICTION_LOG_MAX_BYTES")
    assert Settings.from_env().prediction_log_max_bytes == 64 * 2**20
    monkeypatch.setenv("PREDICTION_LOG_MAX_BYTES", "0")
    # then: 0 is refused naming the variable
    with pytest.raises(SettingsError, match="PREDICTION_LOG_MAX_BYTES"):
        Settings.from_env()
