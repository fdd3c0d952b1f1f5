"""Tables out, a batch at a time: CSV (pyarrow's writer, formula cells neutralised) or Parquet (values as they are).

No spreadsheet evaluates a Parquet cell, and a prefixed `'` would change the
data a program reads: only CSV output is neutralised (formula_cells.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.scoring.formula_cells import neutralised
from pipeline.scoring.table_formats import CSV


class Sink:
    """Writes batches of one schema to a file as CSV or Parquet, in a thread of its own.

    Formatting and writing run in pyarrow without the GIL while the caller scores the
    next batch; one batch is in flight at a time, so memory stays flat. A write error is
    raised by the next write or by close, naming the target rather than the temp file.
    """

    def __init__(self, file: Path, target: Path, fmt: str, schema: pa.Schema) -> None:
        if fmt == CSV:
            for field in schema:
                if pa.types.is_nested(field.type) or pa.types.is_binary(field.type):
                    raise DataError(
                        f"column {field.name!r} holds {field.type} values, which a CSV cannot hold; "
                        "write Parquet (--format parquet)"
                    )
        self.target, self.format, self.schema = target, fmt, schema
        self.rows = 0
        self._file = pa.OSFile(str(file), "w")
        self._writer: Any = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        self._pending: Future[None] | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        """Append `batch` (CSV: formula cells neutralised) once the previous batch is written."""
        self._wait()
        self._pending = self._thread.submit(self._write, batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        """Finish the file (a CSV without rows still gets its header)."""
        try:
            self._wait()
            with self._named_errors():
                if self._writer is None:
                    empty = pa.RecordBatch.from_pylist([], schema=self.schema)
                    self._writer = self._open((neutralised(empty) if self.format == CSV else empty).schema)
                self._writer.close()
        finally:
            self._thread.shutdown(wait=True, cancel_futures=True)
            self._file.close()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, batch: pa.RecordBatch) -> None:
        with self._named_errors():
            if self.format == CSV:
                batch = neutralised(batch)
            batch = _as_declared(batch, self.schema)
            if self._writer is None:
                self._writer = self._open(batch.schema)
            self._writer.write_batch(batch)

    def _open(self, schema: pa.Schema) -> Any:
        if self.format == CSV:
            return pcsv.CSVWriter(self._file, schema)
        return pq.ParquetWriter(self._file, schema)

    @contextlib.contextmanager
    def _named_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if exc.filename is None and exc.errno is not None:
                raise OSError(exc.errno, os.strerror(exc.errno), str(self.target)) from None
            raise


def _as_declared(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with each text column read dictionary-encoded (CODED_TEXT) as the plain text `schema` declares."""
    decode = [
        pa.types.is_dictionary(column.type) and not pa.types.is_dictionary(field.type)
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    if not any(decode):
        return batch
    columns = [
        _decoded(column, field.type) if d else column
        for column, field, d in zip(batch.columns, schema, decode, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _decoded(column: pa.Array, declared: pa.DataType) -> pa.Array:
    plain = column.dictionary_decode()
    return plain if plain.type == declared else pc.cast(plain, declared)  # a large_string read as a dictionary
