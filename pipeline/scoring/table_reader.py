"""Tables in, a batch at a time with flat memory: open_source for the engines, input_columns for the checks.

Input: a CSV file (optionally .gz, .bz2, .zst, .lz4 or .br) read by pyarrow's
streaming reader with every column as text, exactly as written (csv_reader.py),
or a Parquet file read row group by row group with its own types, each row
group's page headers checked first (parquet_pages.py). Which one: `.parquet` or
`.pq` is Parquet, a file that starts with Parquet's magic bytes too; anything
else is CSV (table_formats.py). Batches are read in a thread of their own, ahead
of the one being scored (input_source.py; pyarrow parses without the GIL), and
each is held to the byte caps (byte_caps.py) before it is handed on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.scoring.byte_caps import ByteCaps, check_batch
from pipeline.scoring.csv_reader import header, open_csv, short_message
from pipeline.scoring.input_source import WAITING_BYTES, ReadAhead, Source
from pipeline.scoring.parquet_pages import check_row_group
from pipeline.scoring.table_formats import CSV, PARQUET, format_of, refuse_duplicates


def input_columns(path: Path) -> list[str]:
    """The input's column names, read cheaply (CSV header, Parquet footer); DataError when unreadable or named twice."""
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    if format_of(path) == CSV:
        return header(path)
    try:
        names = list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {short_message(exc)}") from None
    refuse_duplicates(path, names)
    return names


def open_source(
    path: Path,
    batch_rows: int,
    coded: Collection[str] | None = None,
    read_ahead: int = WAITING_BYTES,
    caps: ByteCaps | None = None,
) -> Source:
    """Open `path` for reading in batches of at most `batch_rows` rows; DataError when it cannot be read.

    A CSV's `coded` columns are parsed straight into dictionary arrays (the same text, each
    distinct value held once), which the column validator checks and the model looks up once
    per distinct value. By default: the columns whose first block repeats its values (repetitive).
    Reading starts at once, in a thread of its own, up to `read_ahead` bytes of batches ahead.
    Each batch is measured against `caps` (default: byte_caps.py's) before it is handed on: DataError past them.
    """
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    caps = caps or ByteCaps()
    if format_of(path) == PARQUET:
        return _parquet(path, batch_rows, read_ahead, caps)
    return open_csv(path, batch_rows, coded, read_ahead, caps)


def _parquet(path: Path, batch_rows: int, read_ahead: int, caps: ByteCaps) -> Source:
    try:
        schema = pq.ParquetFile(path).schema_arrow
        # Text and binary columns are read as the file holds them when dictionary-encoded, the dictionary and a
        # code per row, so a batch is measured (byte_caps) before any of it is decoded; the output declares them
        # as `schema` does, and Sink decodes them once they are known to fit.
        coded = [f.name for f in schema if _byte_array(f.type)]
        parquet = pq.ParquetFile(path, read_dictionary=coded) if coded else pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {short_message(exc)}") from None
    refuse_duplicates(path, schema.names)

    def batches() -> Iterator[pa.RecordBatch]:
        done = 0
        try:
            with path.open("rb") as headers:
                for group in range(parquet.metadata.num_row_groups):
                    # The text pages' headers first: pyarrow decompresses a page whole, and a batch's pages at once.
                    check_row_group(headers, parquet.metadata, group, done, batch_rows, caps, path)
                    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group]):
                        check_batch(batch, done, caps, path)
                        done += batch.num_rows
                        yield batch
        except pa.ArrowException as exc:
            raise DataError(f"{path} is not a readable Parquet file: {short_message(exc)}") from None

    return Source(path, PARQUET, schema, ReadAhead(batches(), read_ahead), parquet.metadata.num_rows, 0, lambda: 0)


def _byte_array(kind: pa.DataType) -> bool:
    return any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                       pa.types.is_large_binary))  # fmt: skip
