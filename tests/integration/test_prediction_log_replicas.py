"""The prediction log at team scale: two real replicas writing one log folder, and a log in S3 (moto's server).

The replicas are `python -m`-style uvicorn processes of the conftest's tiny
model (tests/api/test_prediction_log.py's `serving`); S3 is the same stand-in
the team-mode tests start (tests/integration/test_team_server.py's `s3`).
"""

from __future__ import annotations

import secrets
import signal
import threading
from contextlib import ExitStack

import httpx
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from api.log_layout import LABELS, PREDICTIONS, filesystem

from ..api.conftest import records, trained  # noqa: F401  # the tiny model's records, as tests/api has them
from ..api.test_prediction_log import customer_records, logged, serving
from .test_team_server import BUCKET, S3_KEYS, s3  # noqa: F401  # s3: the moto server fixture, reused

pytestmark = pytest.mark.integration


def test_two_replicas_writing_one_folder_log_every_answered_id_once(tmp_path, records):  # noqa: F811
    # given: two replicas logging to the same folder, flushing often
    with ExitStack() as stack:
        replicas = [stack.enter_context(serving(tmp_path, PREDICTION_LOG_FLUSH_S="0.1")) for _ in range(2)]
        answered: list[str] = []
        lock = threading.Lock()

        def client(url: str, n: int) -> None:
            with httpx.Client(base_url=url, timeout=10) as http:
                for i in range(n):
                    body = {"records": customer_records(records[: 1 + i % 4], f"{url[-5:]}-{i}-")}
                    answer = http.post("/predict", json=body)
                    assert answer.status_code == 200, answer.text
                    with lock:
                        answered.extend(answer.json()["prediction_ids"])

        # when: four clients send to both at once, then both are stopped
        threads = [threading.Thread(target=client, args=(r.url, 150)) for r in replicas for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for replica in replicas:
            replica.process.send_signal(signal.SIGTERM)
        for replica in replicas:
            assert replica.process.wait(60) in (0, -signal.SIGTERM)
    # then: every answered id is in the log exactly once, from segments of both replicas
    ids = logged(tmp_path).column("prediction_id").to_pylist()
    assert len(ids) == len(answered) == len(set(ids)) and set(ids) == set(answered)
    names = {p.name.split("-", 1)[1].rsplit("-", 1)[0] for p in tmp_path.rglob("*.parquet")}
    assert len(names) == 2, names  # hostname-pid: one per replica
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # nothing left aside


def test_a_log_in_s3_takes_predictions_and_outcomes(s3, records, monkeypatch):  # noqa: F811
    # given: a replica logging to a prefix of the team server's bucket
    token = secrets.token_urlsafe(16)
    s3_env = {**S3_KEYS, "AWS_ENDPOINT_URL": s3, "AWS_DEFAULT_REGION": "us-east-1"}
    uri = f"s3://{BUCKET}/prediction-log-{secrets.token_hex(4)}"
    with serving(uri, PREDICTION_LOG_FLUSH_S="0.2", OUTCOMES_TOKEN=token, **s3_env) as api:
        with httpx.Client(base_url=api.url) as http:
            # when: records are answered and their outcomes posted
            answers = [http.post("/predict", json={"records": records[:3]}) for _ in range(5)]
            ids = [pid for a in answers for pid in a.json()["prediction_ids"]]
            outcomes = [{"prediction_id": pid, "outcome": "Yes"} for pid in ids[:4]]
            posted = http.post("/outcomes", json={"outcomes": outcomes}, headers={"Authorization": f"Bearer {token}"})
            assert posted.status_code == 200, posted.text
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(60) in (0, -signal.SIGTERM)
    # then: the predictions and the outcomes are objects under the prefix
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    fs, base = filesystem(uri)
    found = fs.get_file_info(pafs.FileSelector(f"{base}/{PREDICTIONS}", recursive=True))
    tables = [pq.read_table(info.path, filesystem=fs) for info in found if info.path.endswith(".parquet")]
    logged_ids = pa.concat_tables(tables).column("prediction_id").to_pylist()
    assert sorted(logged_ids) == sorted(ids)
    segment = fs.get_file_info(f"{base}/{LABELS}/{posted.json()['segment']}")
    assert segment.size > 0
    label_rows = pq.read_table(segment.path, filesystem=fs).to_pylist()
    assert sorted(r["prediction_id"] for r in label_rows) == sorted(ids[:4])
