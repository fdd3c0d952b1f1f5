"""CSV input: pyarrow's streaming reader, every column as text exactly as written, a block at a time.

Nothing is guessed, trimmed or turned into a null. A column whose first block
repeats its values (categories, small counts) is parsed straight into a
dictionary array, the same text with each distinct value held once. A row too
long for a block, or with a field too many, is refused naming its row.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from api.model.schema import quote
from pipeline.core.errors import DataError
from pipeline.scoring.byte_caps import CELL_SETTING, ByteCaps, check_batch
from pipeline.scoring.input_source import ReadAhead, Source
from pipeline.scoring.table_formats import COMPRESSION, CSV, header_names

BLOCK_BYTES = 4 << 20  # CSV read in blocks of this size: memory stays flat whatever the file's size
HEADER_BYTES = 1 << 20  # a header longer than this is not read whole
CODED_TEXT = pa.dictionary(pa.int32(), pa.string())  # a CSV text column read dictionary-encoded
CODED_REPEATS = 4  # a CSV column is read dictionary-encoded when its first block repeats each value this often


def open_csv(path: Path, batch_rows: int, coded: Collection[str] | None, read_ahead: int, caps: ByteCaps) -> Source:
    """`path` as a CSV Source (table_reader.open_source's arguments), its `coded` columns read dictionary-encoded."""
    names = header(path)
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
        raise DataError(_csv_problem(path, exc, invalid, names, caps)) from None

    read = [0]  # bytes read so far, noted by the reading thread (the file is closed once read to the end)

    def batches() -> Iterator[pa.RecordBatch]:
        done = 0
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    read[0] = size
                    return
                except pa.ArrowException as exc:
                    raise DataError(_csv_problem(path, exc, invalid, names, caps)) from None
                read[0] = raw.tell()
                for start in range(0, batch.num_rows, batch_rows):
                    part = batch.slice(start, batch_rows)
                    check_batch(part, done, caps, path)
                    done += part.num_rows
                    yield part
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


def header(path: Path) -> list[str]:
    """The CSV header's names (blank ones named as pandas names them); a name twice is refused."""
    codec = COMPRESSION.get(path.suffix.lower())
    try:
        with pa.input_stream(str(path), compression=codec) as stream:
            start = stream.read(HEADER_BYTES)
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(start, final=len(start) < HEADER_BYTES)
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except (csv.Error, UnicodeDecodeError, pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable CSV: {short_message(exc)}") from None
    if not header:
        raise DataError(f"{path} is empty: a CSV needs a header naming its columns")
    return header_names(path, header)


def _csv_problem(
    path: Path, exc: Exception, invalid: list[Any], names: list[str] | None = None, caps: ByteCaps | None = None
) -> str:
    if names is not None and caps is not None and "straddl" in str(exc):  # a row longer than a block
        return long_row(path, names, caps)
    if invalid:
        row = invalid[0]
        return (
            f"{path} is not a readable CSV: a row ({quote(row.text)}) has {row.actual_columns} fields where the "
            f"header names {row.expected_columns}"
        )
    return f"{path} is not a readable CSV: {short_message(exc)}"


class _LongLine(Exception):
    pass


def long_row(path: Path, names: list[str], caps: ByteCaps) -> str:
    """What to say of a CSV row longer than a block: its number and the first cell over the cap, read again.

    Python's csv reads the file from the start (latin-1: a character is a byte), at most one
    block and a bit of a line at a time, until a field passes the cap or a line a block's length.
    """
    record: list[str] = []
    line_limit = BLOCK_BYTES + 2

    def lines(text: io.TextIOBase) -> Iterator[str]:
        while line := text.readline(line_limit):
            record.append(line)
            if len(line) == line_limit and not line.endswith(("\n", "\r")):
                raise _LongLine  # a line a block long: this record is the one
            yield line

    row, limit = 0, csv.field_size_limit()
    try:
        csv.field_size_limit(caps.cell)  # process-wide; the reading thread parses with pyarrow, not csv
        with pa.input_stream(str(path), compression=COMPRESSION.get(path.suffix.lower())) as stream:
            reader = csv.reader(lines(io.TextIOWrapper(stream, encoding="latin-1", newline="")))
            with contextlib.suppress(StopIteration):
                next(reader)  # the header
                record.clear()
                for _ in reader:
                    row += 1
                    record.clear()
    except (csv.Error, _LongLine):
        pass  # a field past the cap: `record` holds its row's lines so far
    finally:
        csv.field_size_limit(limit)
    try:
        csv.field_size_limit(sum(map(len, record)) + 1)
        fields = next(csv.reader(io.StringIO("".join(record), newline="")), [])
    finally:
        csv.field_size_limit(limit)
    sizes = [len(f) for f in fields]
    where = f"{path}: row {row + 1:,}"
    for i, size in enumerate(sizes):
        if size > caps.cell:
            name = names[i] if i < len(names) else f"field {i + 1}"
            return (
                f"{where}, column {name!r}: a cell of {size:,} bytes or more, more than the {caps.cell:,} a cell "
                f"may hold ({CELL_SETTING}); nothing written"
            )
    return f"{where} is longer than {BLOCK_BYTES:,} bytes, the most a CSV row may be read in; nothing written"


def short_message(exc: Exception) -> str:
    """The message of a pyarrow error without the row text it may quote, first line only."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"(Expected \d+ columns, got \d+).*", r"\1", text)[:300]
