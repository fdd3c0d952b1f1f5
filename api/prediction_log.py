"""The prediction log's writer: every answered record, off the request path, in Parquet segments (api/log_layout.py).

The request path calls `PredictionLog.append` once per answered request: one
tuple holding references to what it already has (the side's model, the
request id, the columns as decoded, the labels and probabilities), no copy
and no per-record work. A background thread flushes every
PREDICTION_LOG_FLUSH_S seconds, and once more at shutdown: it builds the rows
(one per record: `prediction_id` = `REQUEST_ID-i`, the entity id, the score,
the label, the features as JSON or, for a record read from the feature store
by id, {"feature_service": NAME, "entity_id": ID}) and writes one segment per
model per flush for this replica (hostname-pid), whole or not at all.

Memory is bounded: at most PREDICTION_LOG_MAX_ROWS rows wait (appended, or
built by a flush that failed). An answer that would pass the bound is left out
of the log and counted (prediction_log_dropped_total); the client's answer is
never touched. A flush that fails (disk full, read-only, S3 down) is counted
(prediction_log_flush_failures_total) and its rows are written by the next
one; nothing here ever raises into the request path.

What a crash loses: a replica killed outright (SIGKILL, OOM) loses the rows
answered since its last successful flush, at most PREDICTION_LOG_FLUSH_S of
its traffic (more only while flushes are failing) and never more than
PREDICTION_LOG_MAX_ROWS rows. A graceful stop (SIGTERM) flushes what waits
before the process ends. Segments already written are never lost or torn.

Shadow answers (api/shadow.py, role "shadow") are not logged yet: the scorer
child would have to send every record's answer back to the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from starlette.types import Scope

from api.log_layout import PREDICTION_SCHEMA, filesystem, prediction_segment
from api.metrics import ServiceMetrics
from api.model.columns import Columns
from api.model.loaded_model import LoadedModel
from api.model.online_store import ABSENT

log = logging.getLogger("api")

REQUEST_ID_HEADER = b"x-request-id"
PREDICTION_ID_HEADER = "X-Prediction-Id"  # the request's id: record i's prediction id is `<id>-<i>`
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


def request_id(scope: Scope | None) -> str:
    """The client's X-Request-Id when it is a valid one (1-100 of A-Z a-z 0-9 . _ : -), else a random one."""
    if scope is not None:
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER:
                text = value.decode("latin-1")
                if VALID_REQUEST_ID.fullmatch(text):
                    return text
                break
    return uuid.uuid4().hex


def prediction_ids(request: str, records: int) -> list[str]:
    """Each record's prediction id: the request's id, a dash, the record's index."""
    return [f"{request}-{i}" for i in range(records)]


@dataclass(frozen=True, slots=True)
class Entry:
    """One answered request as the request path handed it over: references only, built into rows at flush time."""

    at: float  # time.time() when answered
    request: str
    model: LoadedModel
    role: str  # production | canary | shadow
    columns: Columns
    labels: Sequence[object]
    probabilities: Sequence[float] | None


class PredictionLog:
    """Answers waiting to be written, and the thread that writes them."""

    def __init__(
        self,
        uri: str,
        flush_s: float = 2.0,
        max_rows: int = 100_000,
        metrics: ServiceMetrics | None = None,
        replica: str | None = None,
    ) -> None:
        self.uri, self.flush_s, self.max_rows, self.metrics = uri, flush_s, max_rows, metrics
        self.fs, self.base = filesystem(uri)
        self._replica = replica
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self._waiting = 0  # rows appended or held by a failed flush: what the bound counts
        self._held: list[tuple[str, pa.Table]] = []  # (model, rows) a failed flush could not write
        self._seq = 0
        self._flushing = threading.Lock()  # one flush at a time (the thread's, the last one at shutdown)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def replica(self) -> str:
        """This replica's name in segment names: hostname-pid (read when first needed: a worker's own pid)."""
        if self._replica is None:
            self._replica = f"{socket.gethostname()}-{os.getpid()}"
        return self._replica

    @property
    def waiting(self) -> int:
        """Rows not written yet (appended, or held by a failed flush)."""
        return self._waiting

    def append(
        self,
        model: LoadedModel,
        role: str,
        request: str,
        columns: Columns,
        labels: Sequence[object],
        probabilities: Sequence[float] | None,
    ) -> None:
        """Keep one answered request for the next flush (dropped, counted, past the bound); never raises."""
        rows = len(labels)
        with self._lock:
            if self._waiting + rows <= self.max_rows:
                self._entries.append(Entry(time.time(), request, model, role, columns, labels, probabilities))
                self._waiting += rows
                return
        if self.metrics is not None:
            self.metrics.log_dropped.inc(rows)

    def start(self) -> None:
        """Flush every flush_s seconds from a background thread, until `close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and flush what waits (at shutdown; a failure is counted and logged)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> bool:
        """Write what waits, one segment per model; True when nothing is left waiting. Never raises."""
        with self._flushing:
            with self._lock:
                entries, self._entries = self._entries, []
            try:
                self._held.extend(_tables(entries))
            except Exception as exc:  # rows that cannot be built: dropped (counted), never retried forever
                rows = sum(len(e.labels) for e in entries)
                with self._lock:
                    self._waiting -= rows
                self._count_failure(f"{rows} rows could not be built: {type(exc).__name__}: {exc}", dropped=rows)
                return False
            held, self._held = self._held, []
            at = datetime.now(UTC)
            for index, (model, table) in enumerate(held):
                self._seq += 1
                try:
                    write_atomically(
                        self.fs, prediction_segment(self.base, model, at, self.replica, self._seq), _parquet(table)
                    )
                except Exception as exc:  # disk full, read-only, S3 down: kept for the next flush
                    self._held = held[index:]
                    self._count_failure(f"{type(exc).__name__}: {exc}")
                    return False
                with self._lock:
                    self._waiting -= table.num_rows
                if self.metrics is not None:
                    self.metrics.log_written.inc(table.num_rows)
            return True

    def _count_failure(self, why: str, dropped: int = 0) -> None:
        with contextlib.suppress(Exception):
            log.warning("prediction log flush failed (%d rows waiting): %s", self._waiting, why)
            if self.metrics is not None:
                self.metrics.log_flush_failures.inc()
                if dropped:
                    self.metrics.log_dropped.inc(dropped)


def write_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write `data` whole at `path` or not at all.

    Local: written to a dot-name ending .tmp in the same folder, synced, renamed
    over (and the folder synced). S3: one PUT, which is whole by nature.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def _tables(entries: list[Entry]) -> list[tuple[str, pa.Table]]:
    """The entries' rows (PREDICTION_SCHEMA), one table per model name, in the order answered."""
    by_model: dict[str, dict[str, list[Any]]] = {}
    for entry in entries:
        name = str(entry.model.info.get("name") or "model")
        rows = by_model.get(name)
        if rows is None:
            rows = by_model[name] = {field.name: [] for field in PREDICTION_SCHEMA}
        _add_rows(rows, entry)
    return [(name, pa.Table.from_pydict(rows, schema=PREDICTION_SCHEMA)) for name, rows in by_model.items()]


def _add_rows(rows: dict[str, list[Any]], entry: Entry) -> None:
    model, columns, count = entry.model, entry.columns, len(entry.labels)
    names = list(columns)
    values = [column.tolist() if hasattr(column, "tolist") else list(column) for column in columns.values()]
    records = list(zip(*values, strict=True)) if values else [()] * count
    entity_field = model.entity_field
    entities = columns.get(entity_field) if entity_field else None
    entity_ids = [None if v is None else str(v) for v in _plain(entities)] if entities is not None else [None] * count
    plan = model.plan
    fetched = columns.get(plan.fetched[0].name) if plan is not None and plan.fetched else None
    by_id = [v is ABSENT for v in fetched] if isinstance(fetched, list) else [False] * count
    micros = int(entry.at * 1_000_000)
    rows["time"].extend([micros] * count)
    rows["prediction_id"].extend(prediction_ids(entry.request, count))
    rows["entity_id"].extend(entity_ids)
    rows["model"].extend([str(model.info.get("name") or "model")] * count)
    rows["version"].extend([model.version] * count)
    rows["role"].extend([entry.role] * count)
    probabilities = entry.probabilities
    rows["score"].extend(_plain(probabilities) if probabilities is not None else [None] * count)
    rows["label"].extend(None if label is None else str(label) for label in entry.labels)
    for i, record in enumerate(records):
        if by_id[i] and plan is not None:
            features: dict[str, object] = {"feature_service": plan.spec.service, "entity_id": entity_ids[i]}
        else:
            features = dict(zip(names, record, strict=True))
        rows["features"].append(orjson.dumps(features, option=orjson.OPT_SERIALIZE_NUMPY).decode())


def _plain(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)
