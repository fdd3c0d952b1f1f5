"""Row numbers on Spark as the local engine gives them: 1 is the first data row of each file.

For CSV a first pass counts the rows of each split the file is read in (in the
JVM, no Python), and a row's number is its split's offset plus the rows of the
split before it; for Parquet Spark's row index says it. The columns that carry
a row's place (file, split, index) travel with the batches and are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.scoring.spark_failures import failure

FILE, SPLIT, INDEX = "__score_file__", "__score_split__", "__score_row__"  # row-number columns, dropped


def place_columns(csv: bool) -> list[Any]:
    """The columns to select with the data: each row's file, and its split's start (CSV) or its index (Parquet)."""
    from pyspark.sql import functions as F

    where = F.col("_metadata.file_block_start").alias(SPLIT) if csv else F.col("_metadata.row_index").alias(INDEX)
    return [F.col("_metadata.file_path").alias(FILE), where]


def split_offsets(frame: Any) -> tuple[dict[tuple[str, int], int], int]:
    """Per (file, split start): how many rows of the file come before the split (a count in the JVM); all rows."""
    from pyspark.sql import functions as F

    try:
        counted = (
            frame.select(F.col("_metadata.file_path").alias("f"), F.col("_metadata.file_block_start").alias("s"))
            .groupBy("f", "s")
            .count()
            .collect()
        )
    except Exception as exc:
        raise failure(exc, "the input") from None
    offsets: dict[tuple[str, int], int] = {}
    running: dict[str, int] = {}
    for row in sorted(counted, key=lambda r: (r["f"], r["s"])):
        offsets[(row["f"], int(row["s"]))] = running.get(row["f"], 0)
        running[row["f"]] = running.get(row["f"], 0) + int(row["count"])
    return offsets, sum(running.values())


def runs(
    batch: pa.RecordBatch, offsets: dict[tuple[str, int], int], seen: dict[tuple[str, int], int]
) -> Iterator[tuple[int, int, str, int]]:
    """(start, stop, file, rows before it in its file) for each stretch of rows contiguous in one file."""
    rows = batch.num_rows
    files = pc.dictionary_encode(batch.column(FILE))
    codes = files.indices.to_numpy(zero_copy_only=False)
    names = files.dictionary.to_pylist()
    if SPLIT in batch.schema.names:  # CSV: the split's offset in its file, plus the rows seen of it so far
        starts = batch.column(SPLIT).to_numpy(zero_copy_only=False)
        breaks = np.flatnonzero((np.diff(codes) != 0) | (np.diff(starts) != 0)) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), rows], strict=True):
            key = (names[codes[a]], int(starts[a]))
            before = offsets[key] + seen.get(key, 0)
            seen[key] = seen.get(key, 0) + (b - a)
            yield a, b, key[0], before
        return
    index = batch.column(INDEX).to_numpy(zero_copy_only=False)  # Parquet: the row's index in its file
    breaks = np.flatnonzero((np.diff(codes) != 0) | (np.diff(index) != 1)) + 1
    for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), rows], strict=True):
        yield a, b, names[codes[a]], int(index[a])
