"""How large a cell, and a batch once decoded, may be: checked on every batch before it is decoded or written.

A file's size says little about what it decodes to: a Parquet column of one
8 MiB string, dictionary-encoded and repeated 3 million times, is 200 KB on
disk and 24 TB as text. So every batch is measured as it comes from the
reader, dictionary columns by the length of the value each row points to
(nothing is decoded to measure it), and refused (DataError, exit 2) naming
the column and the row when

- a text or binary cell is longer than `cell` bytes (SCORE_MAX_CELL_BYTES,
  default 64 KiB: far beyond any feature, a long free-text column passed through
  included), or
- the batch (at most 65,536 rows) decodes to more than `batch` bytes
  (SCORE_MAX_BATCH_BYTES, default 256 MiB; the churn data is about 13 MiB a batch).

Rows are numbered as in the rejects file: 1 is the first data row. The score
stage reads the two settings (pipeline/stages/scoring.py) and hands the caps down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import DataError

CELL_BYTES = 64 << 10
BATCH_BYTES = 256 << 20
CELL_SETTING, BATCH_SETTING = "SCORE_MAX_CELL_BYTES", "SCORE_MAX_BATCH_BYTES"  # named in the refusals


@dataclass(frozen=True)
class ByteCaps:
    """The largest cell and the largest decoded batch, in bytes."""

    cell: int = CELL_BYTES
    batch: int = BATCH_BYTES


def check_batch(batch: pa.RecordBatch, first_row: int, caps: ByteCaps, where: object) -> None:
    """DataError naming the column and row of the first cell over `caps.cell`, or where the batch passes `caps.batch`.

    `first_row`: rows of the input before this batch. Measured without decoding anything.
    """
    per_column: dict[str, int] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        measured = _measure(column, caps.cell)
        if measured is None:  # numbers, dates, nested values: their memory as it is
            per_column[name] = column.nbytes
            continue
        per_column[name], over = measured
        if over is not None:
            sizes = cell_sizes(column)
            assert sizes is not None
            size = int(sizes[over])
            raise DataError(
                f"{where}: row {first_row + over + 1:,}, column {name!r}: a cell of {size:,} bytes, more than the "
                f"{caps.cell:,} a cell may hold ({CELL_SETTING}); nothing written"
            )
    if sum(per_column.values()) > caps.batch:  # an upper bound: counted exactly before anything is said
        per_row = np.zeros(batch.num_rows, dtype=np.int64)
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            sizes = cell_sizes(column)
            if sizes is None:
                per_row += column.nbytes // max(batch.num_rows, 1)
            else:
                per_row += sizes
                per_column[name] = int(sizes.sum())
        if sum(per_column.values()) <= caps.batch:
            return
        passing = int(np.searchsorted(np.cumsum(per_row), caps.batch, side="right"))
        largest = max(per_column, key=per_column.__getitem__)
        raise DataError(
            f"{where}: rows {first_row + 1:,}-{first_row + batch.num_rows:,} decode to more than the "
            f"{caps.batch:,} bytes a batch may hold ({BATCH_SETTING}), passing it at row "
            f"{first_row + min(passing, batch.num_rows - 1) + 1:,}; column {largest!r} holds "
            f"{per_column[largest]:,} bytes of them; nothing written"
        )


def _measure(column: pa.Array, cell: int) -> tuple[int, int | None] | None:
    """(bytes of the text decoded, at most; position of the first cell longer than `cell` or None); None: not text."""
    kind = column.type
    if pa.types.is_dictionary(kind) and _offsets(column.dictionary) is not None:
        offsets = _offsets(column.dictionary)
        assert offsets is not None
        if len(offsets) <= len(column):  # fewer values than rows: the longest value times the rows, at most
            longest = int(np.diff(offsets).max(initial=0))
            if longest <= cell:
                return longest * len(column), None
        sizes = cell_sizes(column)
        assert sizes is not None
        over = np.flatnonzero(sizes > cell)
        return int(sizes.sum()), int(over[0]) if over.size else None
    offsets = _offsets(column)
    if offsets is None:
        sizes = cell_sizes(column)  # views
        if sizes is None:
            return None
    else:
        total = int(offsets[-1] - offsets[0])
        if total <= cell:
            return total, None
        sizes = np.diff(offsets)
    over = np.flatnonzero(sizes > cell)
    if over.size and column.null_count:
        over = over[~_nulls(column)[over]]
    return int(sizes.sum()), int(over[0]) if over.size else None


def cell_sizes(column: pa.Array) -> np.ndarray | None:
    """Bytes of each text or binary cell (0: null), dictionaries by the value each row points to; None otherwise."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        offsets = _offsets(column.dictionary)
        if offsets is None:
            return None
        codes = _codes(column)
        sizes = (offsets[codes + 1] - offsets[codes]).astype(np.int64)
    elif pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        return pc.fill_null(pc.binary_length(column), 0).to_numpy().astype(np.int64)
    else:
        offsets = _offsets(column)
        if offsets is None:
            return None
        sizes = np.diff(offsets).astype(np.int64)
    if column.null_count:  # a null's slot may hold bytes nobody reads
        sizes[_nulls(column)] = 0
    return sizes


def _offsets(column: pa.Array) -> np.ndarray | None:
    """The offsets of a string or binary array (large ones too), from its buffer; None for any other type."""
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        width: type = np.int32
    elif pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        width = np.int64
    else:
        return None
    buffer = column.buffers()[1]
    if buffer is None or len(column) == 0:
        return np.zeros(len(column) + 1, dtype=width)
    return np.frombuffer(buffer, dtype=width)[column.offset : column.offset + len(column) + 1]


def _codes(column: pa.Array) -> np.ndarray:
    """A dictionary array's codes, read from the buffer (to_numpy() can take milliseconds); a null's code is 0."""
    indices, kind = column.indices, column.indices.type
    width = ("u" if pa.types.is_unsigned_integer(kind) else "i") + str(kind.bit_width // 8)
    codes = np.frombuffer(indices.buffers()[1], dtype=np.dtype(width))[indices.offset : indices.offset + len(indices)]
    return np.where(_nulls(column), 0, codes) if column.null_count else codes


def _nulls(column: pa.Array) -> np.ndarray:
    return column.is_null().to_numpy(zero_copy_only=False)
