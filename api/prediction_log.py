"""The prediction log's writer: every answered record, off the request path, in Parquet segments (api/log_layout.py).

The request path calls `PredictionLog.append` once per answered request: one
tuple of atoms (the time, the request id, the version's name and version, the
role, the record's values as one orjson dump, about 2 µs; a one-record
answer's label, score and customer id as they are). Not references to the
decoded columns: held for seconds, each request's dict and lists, and even a
tuple holding the model, reached the collector's oldest generation, whose full
passes then walked the whole heap (one-record /predict lost a third of its
throughput, its p99 went from 2 to 50-80 ms). A tuple of atoms is untracked
by the collector at once. (Several records, or a version reading a feature
store: their columns' dump and the model, rarer.)
A flush runs PREDICTION_LOG_FLUSH_S seconds after the previous one ended
(`run`, a task of the app), and once more at shutdown: it builds the rows (one per record: `prediction_id` =
`REQUEST_ID-i`, REQUEST_ID being `request_id`'s, the entity id, the score, the label, the features as JSON or,
for a record read from the feature store by id, {"feature_service": NAME,
"entity_id": ID}), column by column, on the event loop in slices of LOOP_SLICE
rows with the loop let in between (a flush holding a batch of more than
LOOP_SLICE records, whose rows are made in one step, builds in a worker thread
instead), then hands them to a worker thread that
encodes and writes one segment per model per flush for this replica
(hostname-pid), whole or not at all. Built in a thread instead, the rows'
Python work fought the event loop for the interpreter lock: each handover
waited up to the switch interval, and the log cost one-record /predict 14 %
of its throughput for 2 % of its CPU; on the loop, in slices, nothing waits
on a lock (benchmarks/prediction_log.py measures the log on and off).

Memory is bounded: at most PREDICTION_LOG_MAX_ROWS rows, and at most
PREDICTION_LOG_MAX_BYTES bytes of the strings they hold (each answer's record
JSON, request id and customer id, several records' labels and scores JSON),
wait (appended, or built by a flush that failed and held for its retry). An
answer that would pass either bound is left out of the log and counted
(prediction_log_dropped_total); the client's answer is never touched. A
flush that fails (disk full, read-only, S3 down) is counted
(prediction_log_flush_failures_total) and its rows are written by the next
one, under the segment name they were given when first built: a write that
landed yet reported failure is overwritten, never doubled. Nothing here ever
raises into the request path.

What a crash loses: a replica killed outright (SIGKILL, OOM) loses the rows
answered since its last successful flush began taking them: the wait of
PREDICTION_LOG_FLUSH_S starts when a flush ends, so at most
PREDICTION_LOG_FLUSH_S plus one flush's own duration of its traffic (more only
while flushes are failing), and never more than PREDICTION_LOG_MAX_ROWS rows
or PREDICTION_LOG_MAX_BYTES bytes. A graceful stop (SIGTERM: uvicorn's shutdown,
then the app's lifespan) flushes what waits before the process ends (if that
last flush fails, its rows are lost, counted and logged). Segments already
written are never lost or torn.

Shadow answers (api/shadow.py, role "shadow") are not logged yet: the scorer
child would have to send every record's answer back to the worker, with the
production answer's prediction ids carried in each copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, TypeAlias

import orjson
import pyarrow as pa
import pyarrow.compute as pc
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
PREDICTION_ID_HEADER = "X-Prediction-Id"  # the request's id (request_id): record i's prediction id is `<id>-<i>`
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")


def request_id(scope: Scope | None) -> str:
    """The request's id: `<X-Request-Id>.<8 random hex>` when the client sent a valid one, else a random one.

    A valid X-Request-Id is 1-100 of A-Z a-z 0-9 . _ : -; it stays the id's prefix, so the client can find its
    answers, and the random suffix keeps prediction ids unique when clients reuse (or copy) a request id.
    """
    if scope is not None:
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER:
                text = value.decode("latin-1")
                if VALID_REQUEST_ID.fullmatch(text):
                    return f"{text}.{os.urandom(4).hex()}"
                break
    return random_id()


def random_id() -> str:
    """A random UUID (version 4) as 32 hex digits; uuid.uuid4().hex costs 4x as much (3.4 µs)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


# "-0" ... "-9999" made once: a 1,000-record answer's ids are then one concatenation each (~30 µs, not ~70).
_SUFFIXES = [f"-{i}" for i in range(10_000)]


def prediction_ids(request: str, records: int) -> list[str]:
    """Each record's prediction id: the request's id, a dash, the record's index."""
    if records <= len(_SUFFIXES):
        return [request + suffix for suffix in _SUFFIXES[:records]]
    return [f"{request}-{i}" for i in range(records)]


# One answered request as the request path hands it over: (time.time() when answered, request id, model name,
# version, role, records, the JSON of its record (of several: of their columns), then for one record its label,
# score and entity id as they are, for several their labels and scores as JSON and None; last the model when the
# flush needs it (several records, or a version reading a feature store), else None; then the bytes its strings
# hold, what the byte bound counts). The module's docstring says why no reference to the columns.
Entry: TypeAlias = tuple[float, str, str, str, str, int, bytes, Any, Any, Any, LoadedModel | None, int]
Built: TypeAlias = list[tuple[str, pa.Table, int]]  # per model name: its rows, and its entries' bytes
NUMPY = orjson.OPT_SERIALIZE_NUMPY
SLICE = 500  # one-record rows made at once by a flush off the loop (under a millisecond)
_NAME, _ROWS, _MODEL, _SIZE = itemgetter(2), itemgetter(5), itemgetter(10), itemgetter(11)  # of an Entry
GROUPED = 5000  # entries sorted by model at once by a flush on the event loop (~1 ms)
LOOP_FREE = 2000  # entries let go of at once after a flush on the event loop (~0.2 ms)
LOOP_SLICE = 200  # rows made at once by a flush on the event loop (~0.3 ms: what it may delay an answer by)
ABSENT_MARK = "\x00absent"  # a value the feature store gives (ABSENT) in a record's JSON, until the flush reads it


def _absent(value: object) -> object:
    if value is ABSENT:
        return ABSENT_MARK
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class PredictionLog:
    """Answers waiting to be written, and the thread that writes them."""

    def __init__(
        self,
        uri: str,
        flush_s: float = 2.0,
        max_rows: int = 100_000,
        metrics: ServiceMetrics | None = None,
        replica: str | None = None,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        self.uri, self.flush_s, self.max_rows, self.metrics = uri, flush_s, max_rows, metrics
        self.max_bytes = max_bytes
        self.fs, self.base = filesystem(uri)
        self._replica = replica
        # Appended only by the event loop, taken only by the flush thread: no lock. A list's append and the
        # flush's swap are each atomic under the GIL; an append landing on the list being swapped out is in it.
        self._entries: list[Entry] = []
        self._known: dict[int, tuple[LoadedModel, str, str, bool]] = {}  # by id: (model, name, version, no store)
        self._appended = 0  # rows appended since the start (written by the event loop only)
        self._settled = 0  # rows written or dropped by flushes (written by the flush thread only)
        self._appended_bytes = 0  # and their bytes (Entry's last item), counted the same way
        self._settled_bytes = 0
        # (segment path, rows) a failed flush could not write: the path is fixed when the rows are first built, so a
        # retry after a write that landed but reported failure (a folder fsync, a lost S3 response) overwrites it.
        self._held: list[tuple[str, pa.Table, int]] = []  # and the bytes of the entries they were built from
        self._seq = 0
        self._flushing = threading.Lock()  # one write at a time (run's worker thread's, the last one at shutdown)

    @property
    def replica(self) -> str:
        """This replica's name in segment names: hostname-pid (read when first needed: a worker's own pid)."""
        if self._replica is None:
            self._replica = f"{socket.gethostname()}-{os.getpid()}"
        return self._replica

    @property
    def waiting(self) -> int:
        """Rows not written yet (appended, or held by a failed flush): what the bound counts."""
        return self._appended - self._settled

    @property
    def waiting_bytes(self) -> int:
        """The bytes of those rows' entries: what the byte bound counts."""
        return self._appended_bytes - self._settled_bytes

    def append(
        self,
        model: LoadedModel,
        role: str,
        request: str,
        columns: Columns,
        labels: Sequence[object],
        probabilities: Sequence[float] | None,
    ) -> None:
        """Keep one answered request for the next flush (dropped, counted, past the bound); never raises.

        From the event loop only (the request path's one thread): a tuple of references, nothing copied.
        """
        rows = len(labels)
        if self._appended - self._settled + rows > self.max_rows:
            if self.metrics is not None:
                self.metrics.log_dropped.inc(rows)
            return
        known = self._known.get(id(model))
        if known is None or known[0] is not model:  # another model (a swap, the canary): named once
            if len(self._known) >= 16:
                self._known.clear()
            known = self._known[id(model)] = (model, _model_name(model), model.version, model.plan is None)
        _, name, version, plain = known
        entry: Entry
        try:
            # Copied to a bytes object of its own size: orjson's own, kept for seconds, cost 4.7 µs a request
            # against 1.3 (its allocation is large and from malloc; freed at once, it is reused by the next dump).
            if rows == 1:  # the record itself: its row's features as they will be written
                record = {name: values[0] for name, values in columns.items()}
                values = bytes(memoryview(orjson.dumps(record, default=_absent, option=NUMPY)))
                field = model.entity_field
                entity = None if field is None or (ids := columns.get(field)) is None else ids[0]
                score = None if probabilities is None else probabilities[0]
                size = len(values) + len(request) + (len(entity) if type(entity) is str else 0)
                # Atoms only (the model only if the flush needs it): the collector untracks such a tuple at once,
                # so pending entries never reach its oldest generation, whose full passes walk the whole heap.
                entry = (time.time(), request, name, version, role, 1, values, labels[0], score, entity,
                         None if plain else model, size)  # fmt: skip
            else:
                values = bytes(memoryview(orjson.dumps(columns, default=_absent, option=NUMPY)))
                scores = None if probabilities is None else orjson.dumps(probabilities, option=NUMPY)
                answers = orjson.dumps(labels)
                size = len(values) + len(request) + len(answers) + (0 if scores is None else len(scores))
                entry = (time.time(), request, name, version, role, rows, values, answers, scores, None, model,
                         size)  # fmt: skip
        except Exception:  # values JSON cannot hold: never the client's loss
            if self.metrics is not None:
                self.metrics.log_dropped.inc(rows)
            return
        if self._appended_bytes - self._settled_bytes + size > self.max_bytes:  # a few huge ids or records
            if self.metrics is not None:
                self.metrics.log_dropped.inc(rows)
            return
        self._entries.append(entry)
        self._appended += rows
        self._appended_bytes += size

    async def run(self) -> None:
        """Flush every flush_s seconds, rows built on this event loop and written by a worker thread (the app's task).

        Cancelled (the app stopping), the entries it had taken go back to the front of the queue for `close`.
        """
        while True:
            await asyncio.sleep(self.flush_s)
            entries, self._entries = self._entries, []
            try:
                if max(map(_ROWS, entries), default=0) > LOOP_SLICE:  # a large batch's rows are made in one step:
                    built = await asyncio.to_thread(_tables, entries)  # off the loop (10,000 records: ~0.1 s)
                else:
                    built = await _on_loop(_table_steps(entries, LOOP_SLICE))
            except asyncio.CancelledError:
                self._entries[:0] = entries  # the loop's own list: nothing appends while this runs
                raise
            except Exception as exc:
                self._unbuildable(entries, exc)
                continue
            await asyncio.to_thread(self._write, built)
            while entries:  # let go of them in slices too: freeing 30,000 entries at once holds the loop for ms
                del entries[-LOOP_FREE:]
                await asyncio.sleep(0)

    def close(self) -> None:
        """Flush what waits, once `run` is cancelled (at shutdown; a failure is counted and logged)."""
        self.flush()

    def flush(self) -> bool:
        """Write what waits, one segment per model; True when nothing is left waiting. Never raises."""
        with self._flushing:
            entries, self._entries = self._entries, []
            try:
                built = _tables(entries)
            except Exception as exc:  # rows that cannot be built: dropped (counted), never retried forever
                self._unbuildable(entries, exc)
                return False
            return self._write(built, locked=True)

    def _unbuildable(self, entries: list[Entry], exc: Exception) -> None:
        rows = sum(e[5] for e in entries)
        self._settled += rows
        self._settled_bytes += sum(e[11] for e in entries)
        self._count_failure(f"{rows} rows could not be built: {type(exc).__name__}: {exc}", dropped=rows)

    def _write(self, built: Built, locked: bool = False) -> bool:
        """Write the tables built (and those a failed flush held); True when nothing is left waiting."""
        with contextlib.nullcontext() if locked else self._flushing:
            at = datetime.now(UTC)
            for model, table, size in built:
                self._seq += 1
                path = prediction_segment(self.base, model, at, self.replica, self._seq)
                self._held.append((path, table, size))
            held, self._held = self._held, []
            for index, (path, table, size) in enumerate(held):
                try:
                    write_atomically(self.fs, path, _parquet(table))  # a retry: the same path, overwritten whole
                except Exception as exc:  # disk full, read-only, S3 down: kept for the next flush
                    self._held = held[index:]
                    self._count_failure(f"{type(exc).__name__}: {exc}")
                    return False
                self._settled += table.num_rows
                self._settled_bytes += size
                if self.metrics is not None:
                    self.metrics.log_written.inc(table.num_rows)
            return True

    def _count_failure(self, why: str, dropped: int = 0) -> None:
        with contextlib.suppress(Exception):
            log.warning("prediction log flush failed (%d rows waiting): %s", self.waiting, why)
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
    pq.write_table(table, sink, compression="snappy")  # zstd's smaller files cost 7x the CPU (1.5 µs a row)
    return bytes(sink.getvalue().to_pybytes())


def _tables(entries: list[Entry]) -> Built:
    """The entries' rows (PREDICTION_SCHEMA), one table per model name (off the event loop: a thread, shutdown)."""
    steps = _table_steps(entries, SLICE)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        # The lock let go after each slice: one Arrow call holds it until it returns, and while this thread
        # wants it, the event loop waits up to the switch interval (5 ms) every time it takes it back.
        time.sleep(0)


async def _on_loop(steps: Generator[None, None, Built]) -> Built:
    """Run a build's steps on the event loop, letting it in between."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        await asyncio.sleep(0)


def _table_steps(entries: list[Entry], rows: int) -> Generator[None, None, Built]:
    """Build the entries' tables (one per model name), yielding after each slice of about `rows` rows."""
    groups: dict[str, tuple[list[Entry], list[Entry]]] = {}
    sizes: dict[str, int] = {}
    names = set(map(_NAME, entries))  # C loops: a flush's first step is its longest (~1 ms for 30,000 entries)
    if len(names) == 1 and not any(map(_MODEL, entries)):  # the common case: one model, one record each
        name = names.pop()
        groups[name], sizes[name] = (entries, []), sum(map(_SIZE, entries))
    else:
        for i, entry in enumerate(entries, 1):
            quick, other = groups.setdefault(entry[2], ([], []))
            # One record of a version without a store: made without parsing (_quick_rows).
            (quick if entry[10] is None else other).append(entry)
            sizes[entry[2]] = sizes.get(entry[2], 0) + entry[11]
            if i % GROUPED == 0:
                yield
    yield
    tables = []
    for name, (quick, other) in groups.items():
        parts = []
        for start in range(0, len(quick), rows):
            parts.append(_quick_rows(name, quick[start : start + rows]))
            yield
        batch: list[Entry] = []
        in_batch = 0
        for entry in other:  # entries of several records, in batches of about `rows` rows (one entry at least)
            batch.append(entry)
            in_batch += entry[5]
            if in_batch >= rows:
                parts.append(pa.Table.from_pydict(_rows(name, batch), schema=PREDICTION_SCHEMA))
                batch, in_batch = [], 0
                yield
        if batch:
            parts.append(pa.Table.from_pydict(_rows(name, batch), schema=PREDICTION_SCHEMA))
        tables.append((name, parts[0] if len(parts) == 1 else pa.concat_tables(parts), sizes[name]))
    return tables


def _quick_rows(name: str, entries: list[Entry]) -> pa.Table:
    """The rows of one-record answers (one-record traffic), column by column: their records' JSON is their features."""
    features = pa.array([e[6] for e in entries], pa.binary()).cast(pa.string())
    micros = pc.multiply(pa.array([e[0] for e in entries], pa.float64()), 1_000_000)
    times = pc.cast(micros, pa.int64(), safe=False).cast(PREDICTION_SCHEMA.field("time").type)
    columns = {
        "time": times,
        "prediction_id": pa.array([e[1] + "-0" for e in entries], pa.string()),
        "entity_id": pa.array([None if (x := e[9]) is None else str(x) for e in entries], pa.string()),
        "model": pa.array([name] * len(entries), pa.string()),
        "version": pa.array([e[3] for e in entries], pa.string()),
        "role": pa.array([e[4] for e in entries], pa.string()),
        "score": pa.array([e[8] for e in entries], pa.float64()),
        "label": pa.array([None if (x := e[7]) is None else str(x) for e in entries], pa.string()),
        "features": features,
    }
    return pa.Table.from_pydict(columns, schema=PREDICTION_SCHEMA)


def _rows(name: str, entries: list[Entry]) -> dict[str, list[Any]]:
    """The rows of any entries (several records, records a feature store completed), record by record."""
    times: list[int] = []
    ids: list[str] = []
    entities: list[str | None] = []
    version: list[str] = []
    roles: list[str] = []
    scores: list[float | None] = []
    labels: list[str | None] = []
    features: list[bytes] = []
    for at, request, _, model_version, role, count, values, label, score, entity, model, _size in entries:
        row_entities, row_features = _parsed(model, values, count)
        times.extend([int(at * 1_000_000)] * count)
        ids.extend(prediction_ids(request, count))
        version.extend([model_version] * count)
        roles.extend([role] * count)
        if count == 1:  # its label, score and customer as the answer had them
            entities.append(None if entity is None else str(entity))
            scores.append(score)
            labels.append(None if label is None else str(label))
        else:
            entities.extend(row_entities)
            scores.extend([None] * count if score is None else orjson.loads(score))
            labels.extend(None if v is None else str(v) for v in orjson.loads(label))
        features.extend(row_features)
    return {"time": times, "prediction_id": ids, "entity_id": entities, "model": [name] * len(ids),
            "version": version, "role": roles, "score": scores, "label": labels, "features": features}  # fmt: skip


def _parsed(model: LoadedModel | None, values: bytes, count: int) -> tuple[list[str | None], list[bytes]]:
    """(entity ids, features JSON) of an entry's records, from its JSON (one record's, or several's columns).

    A record the feature store completed is its reference, {"feature_service": NAME, "entity_id": ID}.
    """
    if count == 1:
        records = [orjson.loads(values)]
    else:
        columns = orjson.loads(values)
        names = list(columns)
        records = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)] if names else []
        records = records or [{} for _ in range(count)]
    field = None if model is None else model.entity_field
    plan = None if model is None else model.plan
    entities = [None if field is None or r.get(field) is None else str(r[field]) for r in records]
    fetched = plan.fetched[0].name if plan is not None and plan.fetched else None
    features = []
    for record, entity in zip(records, entities, strict=True):
        if fetched is not None and record.get(fetched) == ABSENT_MARK and plan is not None:
            features.append(orjson.dumps({"feature_service": plan.spec.service, "entity_id": entity}))
        else:
            features.append(orjson.dumps(record))
    return entities, features


def _model_name(model: LoadedModel) -> str:
    return str(model.info.get("name") or "model")
