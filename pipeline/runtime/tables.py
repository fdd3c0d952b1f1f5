"""Tables in and out, a batch at a time: CSV and Parquet readers and writers with flat memory.

Input: a CSV file (optionally .gz, .bz2, .zst, .lz4 or .br) read by pyarrow's
streaming reader with every column as text, exactly as written (nothing is
guessed, trimmed or turned into a null), or a Parquet file read row group by
row group with its own types. Which one: `.parquet` or `.pq` is Parquet, a file
that starts with Parquet's magic bytes too; anything else is CSV. Batches are
read in a thread of their own, ahead of the one being scored (pyarrow parses
without the GIL). A CSV's repetitive columns (categories, small counts: each
value repeated in the first block) are parsed straight into dictionary arrays,
the same text with each distinct value held once, and written back as plain text.

Output: CSV (pyarrow's writer; text cells a spreadsheet would run as formulas
are neutralised, pipeline/core/formula_cells.py) or Parquet (typed values as
they are: no spreadsheet evaluates a Parquet cell, and a prefixed `'` would
change the data a program reads).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import csv
import functools
import io
import os
import re
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from api.model.schema import quote
from pipeline.core.column_validator import NUMBER
from pipeline.core.errors import ConfigError, DataError

CSV, PARQUET = "csv", "parquet"
FORMATS = (CSV, PARQUET)
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_MAGIC = b"PAR1"
COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4", ".br": "brotli"}
BLOCK_BYTES = 4 << 20  # CSV read in blocks of this size: memory stays flat whatever the file's size
HEADER_BYTES = 1 << 20  # a header longer than this is not read whole
CODED_TEXT = pa.dictionary(pa.int32(), pa.string())  # a CSV text column read dictionary-encoded
CODED_REPEATS = 4  # a CSV column is read dictionary-encoded when its first block repeats each value this often
WAITING_BYTES = 16 << 20  # batches read ahead of the one being scored, at most (at least one)


def format_of(path: Path) -> str:
    """The format of an input: Parquet by its suffix or magic bytes, else CSV."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return PARQUET
    with contextlib.suppress(OSError):
        if path.is_file():
            with path.open("rb") as f:
                if f.read(4) == PARQUET_MAGIC:
                    return PARQUET
    return CSV


def output_format(output: Path, requested: str | None) -> str:
    """--format, else the output's suffix (.parquet/.pq: Parquet, else CSV); a contradicting suffix is refused."""
    by_suffix = (
        PARQUET if output.suffix.lower() in PARQUET_SUFFIXES else CSV if output.suffix.lower() == ".csv" else None
    )
    if requested is None:
        return by_suffix or CSV
    if requested not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {requested!r}")
    if by_suffix is not None and by_suffix != requested:
        raise ConfigError(f"--format {requested} but the output {output} ends in {output.suffix}; make them agree")
    return requested


@dataclass
class Source:
    """An open input: its schema, batches and how far reading has got (for the progress line).

    `batches` are read in a thread of their own (ReadAhead); close() stops it and closes the file.
    """

    path: Path
    format: str
    schema: pa.Schema  # a CSV's columns are all text; `coded` ones arrive dictionary-encoded in the batches
    batches: ReadAhead
    total_rows: int | None  # Parquet knows; CSV is estimated from the bytes read
    _size: int
    _position: Any  # callable: bytes read so far

    def share_read(self) -> float | None:
        """How much of a CSV input has been read (0..1), or None when the row count is known."""
        if self.total_rows is not None or self._size == 0:
            return None
        return min(float(self._position()) / self._size, 1.0)

    def close(self) -> None:
        """Stop reading and close the input (idempotent)."""
        self.batches.close()


class ReadAhead:
    """Batches read in a thread of their own: pyarrow parses the next ones, without the GIL, while this one is scored.

    The batches waiting hold at most `limit` bytes (always at least one batch), so
    memory stays flat; limit() changes it, e.g. from a start-up's read-ahead to a
    couple of batches once scoring runs. An error while reading is raised by the
    iteration after the batches read before it, as reading in the caller's thread
    would. close() stops the thread, which closes the reader.
    """

    _END = object()

    def __init__(self, batches: Iterator[pa.RecordBatch], limit: int = WAITING_BYTES) -> None:
        self._batches = batches
        self._limit = limit
        self._waiting: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._changed = threading.Condition()
        self._stop = False
        self._done = False
        self._thread = threading.Thread(target=self._read, name="reader", daemon=True)
        self._thread.start()

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self) -> pa.RecordBatch:
        if self._done:
            raise StopIteration
        with self._changed:
            while not self._waiting:
                self._changed.wait()
            item, size = self._waiting.popleft()
            self._bytes -= size
            self._changed.notify_all()
        if item is ReadAhead._END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def limit(self, size: int) -> None:
        """At most `size` bytes of batches wait from now on."""
        with self._changed:
            self._limit = size
            self._changed.notify_all()

    def close(self) -> None:
        """Stop reading: the thread finishes the batch it is parsing, if any, closes the reader and ends."""
        self._done = True
        with self._changed:
            self._stop = True
            self._waiting.clear()
            self._changed.notify_all()
        self._thread.join()

    def _read(self) -> None:
        try:
            for batch in self._batches:
                if not self._put(batch, batch.nbytes):
                    return
            self._put(ReadAhead._END, 0)
        except BaseException as exc:  # handed to the caller, raised where it iterates
            self._put(exc, 0)
        finally:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()  # a generator's `finally`: the file is closed in the thread that read it

    def _put(self, item: Any, size: int) -> bool:
        with self._changed:
            while not self._stop and self._waiting and self._bytes + size > self._limit:
                self._changed.wait()
            if self._stop:
                return False
            self._waiting.append((item, size))
            self._bytes += size
            self._changed.notify_all()
            return True


def input_columns(path: Path) -> list[str]:
    """The input's column names, read cheaply (CSV header, Parquet footer); DataError when unreadable or named twice."""
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    if format_of(path) == CSV:
        return _header(path)
    try:
        names = list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {_short(exc)}") from None
    refuse_duplicates(path, names)
    return names


def open_source(
    path: Path, batch_rows: int, coded: Collection[str] | None = None, read_ahead: int = WAITING_BYTES
) -> Source:
    """Open `path` for reading in batches of at most `batch_rows` rows; DataError when it cannot be read.

    A CSV's `coded` columns are parsed straight into dictionary arrays (the same text, each
    distinct value held once), which the column validator checks and the model looks up once
    per distinct value. By default: the columns whose first block repeats its values (repetitive).
    Reading starts at once, in a thread of its own, up to `read_ahead` bytes of batches ahead.
    """
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    if format_of(path) == PARQUET:
        return _parquet(path, batch_rows, read_ahead)
    return _csv(path, batch_rows, coded, read_ahead)


def _parquet(path: Path, batch_rows: int, read_ahead: int) -> Source:
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {_short(exc)}") from None
    refuse_duplicates(path, schema.names)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from parquet.iter_batches(batch_size=batch_rows)
        except pa.ArrowException as exc:
            raise DataError(f"{path} is not a readable Parquet file: {_short(exc)}") from None

    return Source(path, PARQUET, schema, ReadAhead(batches(), read_ahead), parquet.metadata.num_rows, 0, lambda: 0)


def _csv(path: Path, batch_rows: int, coded: Collection[str] | None, read_ahead: int) -> Source:
    names = _header(path)
    if coded is None:
        coded = repetitive(path, names)
    raw = pa.OSFile(str(path), "r")
    size = raw.size()
    codec = COMPRESSION.get(path.suffix.lower())
    stream = pa.CompressedInputStream(raw, codec) if codec else raw
    invalid: list[Any] = []

    def refuse_row(row: Any) -> str:
        invalid.append(row)
        return "error"

    try:
        reader = _open_csv(
            stream, names, {name: CODED_TEXT if name in coded else pa.string() for name in names}, refuse_row
        )
    except pa.ArrowException as exc:
        raw.close()
        raise DataError(_csv_problem(path, exc, invalid)) from None

    read = [0]  # bytes read so far, noted by the reading thread (the file is closed once read to the end)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    read[0] = size
                    return
                except pa.ArrowException as exc:
                    raise DataError(_csv_problem(path, exc, invalid)) from None
                read[0] = raw.tell()
                for start in range(0, batch.num_rows, batch_rows):
                    yield batch.slice(start, batch_rows)
        finally:
            raw.close()

    schema = pa.schema([pa.field(name, pa.string()) for name in names])
    return Source(path, CSV, schema, ReadAhead(batches(), read_ahead), None, size, lambda: read[0])


def _open_csv(stream: Any, names: list[str], types: dict[str, pa.DataType], refuse_row: Any = None) -> Any:
    return pcsv.open_csv(
        stream,
        read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, column_names=names, skip_rows=1),
        parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=refuse_row),
        convert_options=pcsv.ConvertOptions(column_types=types),
    )


def repetitive(path: Path, names: list[str]) -> list[str]:
    """The columns whose first block of text holds each distinct value CODED_REPEATS times or more, on average.

    Only a guess of what is worth reading dictionary-encoded (categories, small counts);
    a wrong one costs time, never a different value. None of them when the first block cannot be read
    (the reader opened next says why).
    """
    try:
        with pa.input_stream(str(path), compression=COMPRESSION.get(path.suffix.lower())) as stream:
            block = stream.read(BLOCK_BYTES)  # one block: a streaming reader would read dozens ahead
        # The block's last row may be cut short: skipped.
        first = _open_csv(pa.BufferReader(block), names, dict.fromkeys(names, pa.string()), lambda _: "skip")
        first = first.read_next_batch()
    except (pa.ArrowException, OSError, StopIteration):
        return []
    rows = first.num_rows
    return [
        n for n, c in zip(names, first.columns, strict=True) if pc.count_distinct(c).as_py() * CODED_REPEATS <= rows
    ]


def _header(path: Path) -> list[str]:
    """The CSV header's names (blank ones named as pandas names them); a name twice is refused."""
    codec = COMPRESSION.get(path.suffix.lower())
    try:
        with pa.input_stream(str(path), compression=codec) as stream:
            start = stream.read(HEADER_BYTES)
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(start, final=len(start) < HEADER_BYTES)
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except (csv.Error, UnicodeDecodeError, pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable CSV: {_short(exc)}") from None
    if not header:
        raise DataError(f"{path} is empty: a CSV needs a header naming its columns")
    return header_names(path, header)


def header_names(where: object, header: list[str]) -> list[str]:
    """A CSV header's names, blank ones named as pandas names them; DataError when a name comes twice."""
    names = [name if name.strip() else f"Unnamed: {i}" for i, name in enumerate(header)]
    refuse_duplicates(where, names)
    return names


def refuse_duplicates(where: object, names: list[str]) -> None:
    """DataError naming the first column that appears twice (Spark and pandas would rename or drop it)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{where}: column {name!r} appears more than once in the header; rename or drop one")
        seen.add(name)


def _csv_problem(path: Path, exc: Exception, invalid: list[Any]) -> str:
    if invalid:
        row = invalid[0]
        return (
            f"{path} is not a readable CSV: a row ({quote(row.text)}) has {row.actual_columns} fields where the "
            f"header names {row.expected_columns}"
        )
    return f"{path} is not a readable CSV: {_short(exc)}"


def _short(exc: Exception) -> str:
    """The message of a pyarrow error without the row text it may quote, first line only."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"(Expected \d+ columns, got \d+).*", r"\1", text)[:300]


# --- output -------------------------------------------------------------------------------------


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
    columns = [c.dictionary_decode() if d else c for c, d in zip(batch.columns, decode, strict=True)]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def neutralised(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` with every text cell a spreadsheet would run as a formula prefixed with `'` (formula_cells.neutralise).

    The first byte of each cell is checked with numpy; only cells that start with a
    trigger are looked at: a plain number (`-3.5`) stays, anything else gets the quote.
    Long and view strings become plain strings, so every batch has the same schema.
    """
    columns = [_neutralised(column) for column in batch.columns]
    if all(a is b for a, b in zip(columns, batch.columns, strict=True)):
        return batch
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _neutralised(column: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type):
        dictionary = _neutralised(column.dictionary)
        if dictionary is column.dictionary:
            return column
        return pa.DictionaryArray.from_arrays(column.indices, dictionary)
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        column = pc.cast(column, pa.string())
    if not pa.types.is_string(column.type):
        return column  # numbers, booleans and other typed values are never formulas
    suspect = _trigger_bytes()[_first_bytes(column)]
    if not suspect.any():
        return column
    positions = np.flatnonzero(suspect)
    cells = column.take(pa.array(positions))
    plain = pc.match_substring_regex(cells, f"^{NUMBER}$").to_numpy(zero_copy_only=False)
    if plain.all():
        return column
    odd = positions[~plain]
    texts = column.take(pa.array(odd)).to_pylist()
    from pipeline.core.formula_cells import neutralise

    fixed = [neutralise(t) for t in texts]  # exact: Unicode digits make a plain number too
    mask = np.zeros(len(column), dtype=bool)
    changed = [i for i, (a, b) in enumerate(zip(texts, fixed, strict=True)) if a != b]
    if not changed:
        return column
    mask[odd[changed]] = True
    return pc.replace_with_mask(column, pa.array(mask), pa.array([fixed[i] for i in changed], type=column.type))


@functools.cache
def _trigger_bytes() -> np.ndarray:
    """Per byte value: does a cell starting with it look like a formula (formula_cells.TRIGGERS)."""
    from pipeline.core.formula_cells import TRIGGERS  # imports pandas: not before the input is being read

    triggers = np.zeros(256, dtype=bool)
    triggers[np.frombuffer("".join(TRIGGERS).encode(), dtype=np.uint8)] = True
    return triggers


def _first_bytes(column: pa.Array) -> np.ndarray:
    """The first byte of each cell of a string array (0 for empty or null cells)."""
    rows = len(column)
    _, offsets_buffer, data_buffer = column.buffers()
    if data_buffer is None or rows == 0:
        return np.zeros(rows, dtype=np.uint8)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[column.offset : column.offset + rows + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    if len(data) == 0:
        return np.zeros(rows, dtype=np.uint8)
    first = data[np.minimum(offsets[:-1], len(data) - 1)]
    first[offsets[1:] == offsets[:-1]] = 0
    if column.null_count:
        first[column.is_null().to_numpy(zero_copy_only=False)] = 0
    return first
