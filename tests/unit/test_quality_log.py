"""The prediction log's pipeline side: label files normalised, label segments named by content, segments read."""

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api.log_layout import LABEL_SCHEMA, PREDICTION_SCHEMA
from pipeline.core.errors import DataError
from pipeline.store.prediction_log import PredictionLog, canonical_digest, normalise_labels

NOW = datetime(2026, 3, 2, tzinfo=UTC)


def labels(**columns):
    return pd.DataFrame(columns)


def test_labels_by_id_and_by_customer_become_label_schema_rows():
    frame = labels(prediction_id=["p1", None], entity_id=[None, "c9"], observed_at=[None, "2026-03-01T10:00"],
                   outcome=["Yes", "No"])  # fmt: skip
    table = normalise_labels(frame, "file:l.csv", NOW, "l.csv")
    assert table.schema == LABEL_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["prediction_id"] == "p1" and rows[0]["observed_at"] is None and rows[0]["source"] == "file:l.csv"
    assert rows[1]["entity_id"] == "c9" and rows[1]["observed_at"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert rows[1]["received_at"] == NOW


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (labels(prediction_id=["p1"]), "no outcome column"),
        (labels(entity_id=["c1"], outcome=["Yes"]), "no prediction_id, or entity_id and observed_at column"),
        (labels(prediction_id=[1.5], outcome=["Yes"]), "column prediction_id must hold text or integers"),
        (labels(entity_id=["c1"], observed_at=["soon"], outcome=["Yes"]), "column observed_at must hold ISO 8601"),
        (labels(entity_id=["c1"], observed_at=[3.0], outcome=["Yes"]), "column observed_at must hold times"),
    ],
)
def test_a_missing_or_mistyped_column_is_named(frame, message):
    with pytest.raises(DataError, match=message):
        normalise_labels(frame, "file:l.csv", NOW, "l.csv")


def test_the_digest_is_the_labels_alone():
    frame = labels(prediction_id=["p1", "p2"], outcome=["Yes", 1])
    first = normalise_labels(frame, "file:a.csv", NOW, "a.csv")
    again = normalise_labels(frame.iloc[::-1], "file:b.csv", datetime(2027, 1, 1, tzinfo=UTC), "b.csv")
    assert canonical_digest(first) == canonical_digest(again)  # another order, name and time: the same labels
    other = normalise_labels(labels(prediction_id=["p1", "p2"], outcome=["Yes", "0"]), "file:a.csv", NOW, "a.csv")
    assert canonical_digest(other) != canonical_digest(first)


def test_the_same_labels_are_written_once(tmp_path):
    log = PredictionLog.open(str(tmp_path / "log"))
    table = normalise_labels(labels(prediction_id=["p1"], outcome=["Yes"]), "file:a.csv", NOW, "a.csv")
    path, written = log.write_labels(table)
    assert written and path.endswith(f"{canonical_digest(table)}.parquet")
    assert log.write_labels(table) == (path, False)
    assert [p.name for p in (tmp_path / "log" / "labels").iterdir()] == [path.rsplit("/", 1)[-1]]
    assert log.labels()["prediction_id"].tolist() == ["p1"]


def segment(folder, name, times, ids):
    folder.mkdir(parents=True, exist_ok=True)
    n = len(ids)
    table = pa.Table.from_pydict({"time": times, "prediction_id": ids, "entity_id": [None] * n, "model": ["m"] * n,
                                  "version": ["1"] * n, "role": ["production"] * n, "score": [0.5] * n,
                                  "label": ["No"] * n, "features": ["{}"] * n}, schema=PREDICTION_SCHEMA)  # fmt: skip
    pq.write_table(table, folder / name)


def test_predictions_are_read_from_whole_segments_only_and_since_skips_earlier_days(tmp_path):
    root = tmp_path / "log" / "predictions" / "churn-classifier"
    day1, day2 = datetime(2026, 3, 1, 12, tzinfo=UTC), datetime(2026, 3, 2, 12, tzinfo=UTC)
    segment(root / "2026-03-01", "120000.000000-a-000001.parquet", [day1], ["p1"])
    segment(root / "2026-03-02", "120000.000000-a-000002.parquet", [day2], ["p2"])
    segment(root / "2026-03-02", ".120500.000000-a-000003.parquet.tmp", [day2], ["half-written"])
    segment(tmp_path / "log" / "predictions" / "another-model" / "2026-03-02", "x.parquet", [day2], ["other"])
    log = PredictionLog.open(str(tmp_path / "log"))
    assert log.predictions("churn-classifier")["prediction_id"].tolist() == ["p1", "p2"]
    assert log.predictions("churn-classifier", since=datetime(2026, 3, 2, tzinfo=UTC))["prediction_id"].tolist() == [
        "p2"
    ]
    assert log.predictions("nothing logged").empty and log.labels().empty


def test_an_unsupported_log_root_is_a_usage_error():
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match="PREDICTION_LOG_URI"):
        PredictionLog.open("gs://bucket/log")


def test_a_flush_stored_twice_keeps_one_copy_and_only_ids_whose_copies_differ_are_ambiguous(tmp_path):
    from pipeline.stages.outcomes import unique_predictions

    # given a segment written twice (a retried flush) and an id logged twice with different answers
    root = tmp_path / "log" / "predictions" / "m" / "2026-03-01"
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    segment(root, "120000.000000-a-000001.parquet", [at, at], ["p1", "p2"])
    segment(root, "120001.000000-a-000002.parquet", [at, at], ["p1", "p2"])
    segment(root, "120002.000000-a-000003.parquet", [datetime(2026, 3, 1, 13, tzinfo=UTC)], ["p2"])
    predictions = PredictionLog.open(str(tmp_path / "log")).predictions("m")
    # when the log is made unique
    kept, ambiguous = unique_predictions(predictions)
    # then p1 is kept once, and every row of p2 (whose copies differ) is left out and counted
    assert kept["prediction_id"].tolist() == ["p1"] and ambiguous == 3


def test_an_unreadable_segment_is_skipped_named_and_left_in_place(tmp_path):
    # given two whole segments and one torn one between them
    root = tmp_path / "log" / "predictions" / "m" / "2026-03-01"
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    segment(root, "120000.000000-a-000001.parquet", [at], ["p1"])
    (root / "120001.000000-a-000002.parquet").write_bytes(b"PAR1 torn")
    segment(root, "120002.000000-a-000003.parquet", [at], ["p3"])
    log = PredictionLog.open(str(tmp_path / "log"))
    # when the predictions are read
    found = log.predictions("m")
    # then the others are read, the torn one is named, and it is not moved
    assert found["prediction_id"].tolist() == ["p1", "p3"]
    assert len(log.unreadable) == 1 and "120001.000000-a-000002.parquet" in log.unreadable[0]
    assert (root / "120001.000000-a-000002.parquet").exists()
