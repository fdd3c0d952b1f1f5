"""A Parquet row group's text pages measured from their headers, before pyarrow decompresses any of them.

pyarrow decompresses a whole page before a value of it can be looked at, and
builds a batch from every page its rows touch: a 40 KB file of zstd pages can
hold a 1 GiB string, or a thousand of them. Each page's header (Thrift compact
protocol, a few dozen bytes) says how large it is once decompressed and how many
rows it holds, so the headers of each flat text column are read first and a
row group is refused (DataError, exit 2) when

- a page decompresses to more than a batch may hold (it says whether a cell must
  be over the cell cap, and names the row when the page holds one), or
- the pages a batch's rows touch add up to more than a batch may hold.

A smaller page is read, and byte_caps names the row and column of a cell over the cap.

Columns of numbers are fixed width: a batch of them is as small as its rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.scoring.byte_caps import BATCH_SETTING, CELL_SETTING, ByteCaps

DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
HEADER_BYTES = 16 << 20  # a page header longer than this (statistics' values included, skipped unread): refused
READ_AHEAD = 256  # bytes of a header read at a time (most are a few dozen)
DEPTH = 16  # structs within structs in a header, at most
LEVEL_BYTES = 8  # a cell's length prefix and its levels, at most, in a plain page


@dataclass(frozen=True)
class Page:
    """One page of a column chunk: its first row in the file (0-based), rows (0: a dictionary) and size decompressed."""

    first_row: int
    rows: int
    size: int


def check_row_group(
    file: BinaryIO, metadata: pq.FileMetaData, group: int, first_row: int, batch_rows: int, caps: ByteCaps, where: Any
) -> None:
    """DataError when a text page of row group `group` (first row: `first_row`) or a batch of it is too large."""
    rows = metadata.row_group(group).num_rows
    windows = np.zeros(max(-(-rows // batch_rows), 1), dtype=np.int64)
    largest: dict[str, np.ndarray] = {}
    for j in range(metadata.num_columns):
        leaf = metadata.schema.column(j)
        if leaf.physical_type != "BYTE_ARRAY" or leaf.max_repetition_level > 0 or "." in leaf.path:
            continue
        sizes = np.zeros_like(windows)
        for page in pages(file, metadata.row_group(group).column(j), first_row, where):
            _check_page(page, leaf.name, caps, where)
            if page.rows == 0:
                sizes += page.size  # a dictionary is held while every batch of its row group is read
            else:
                local = page.first_row - first_row
                sizes[local // batch_rows : (local + page.rows - 1) // batch_rows + 1] += page.size
        windows += sizes
        largest[leaf.name] = sizes
    over = np.flatnonzero(windows > caps.batch)
    if over.size:
        w = int(over[0])
        name = max(largest, key=lambda n: int(largest[n][w]))
        start, stop = first_row + w * batch_rows + 1, first_row + min((w + 1) * batch_rows, rows)
        raise DataError(
            f"{where}: rows {start:,}-{stop:,} hold {int(windows[w]):,} bytes of text once decompressed, more than "
            f"the {caps.batch:,} a batch may hold ({BATCH_SETTING}); column {name!r} holds "
            f"{int(largest[name][w]):,} of them; nothing written"
        )


def _check_page(page: Page, column: str, caps: ByteCaps, where: Any) -> None:
    """A page larger than a batch may hold is refused unopened; a smaller one is read, its cells checked one by one."""
    if page.size <= caps.batch:
        return
    if page.rows == 0:
        held = f"column {column!r}: the dictionary of the rows from {page.first_row + 1:,} on"
    elif page.rows == 1:
        held = f"row {page.first_row + 1:,}, column {column!r}: a page of one cell"
    else:
        held = f"rows {page.first_row + 1:,}-{page.first_row + page.rows:,}, column {column!r}: a page of them"
    said = (
        f"{where}: {held} decompresses to {page.size:,} bytes, more than the {caps.batch:,} a batch may hold "
        f"({BATCH_SETTING})"
    )
    if page.rows and page.size > page.rows * (caps.cell + LEVEL_BYTES) + 64:
        some = "its cell" if page.rows == 1 else "at least one of its cells"
        said += f": {some} is more than the {caps.cell:,} bytes a cell may hold ({CELL_SETTING})"
    raise DataError(said + "; nothing written")


def pages(file: BinaryIO, chunk: Any, first_row: int, where: Any) -> Iterator[Page]:
    """The pages of column chunk `chunk` (pyarrow's ColumnChunkMetaData), read from their headers in `file`."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and chunk.dictionary_page_offset:
        start = min(start, chunk.dictionary_page_offset)
    end, position, row = start + chunk.total_compressed_size, start, first_row
    while position < end:
        reader = _Header(file, position, where)
        header = reader.struct({1: None, 2: None, 3: None, 5: {1: None}, 7: {1: None}, 8: {1: None, 3: None}}, 0)
        kind, size, stored = header.get(1), header.get(2, -1), header.get(3, -1)
        if size < 0 or stored < 0:
            raise DataError(f"{where} is not a readable Parquet file: a page header without its sizes")
        if kind == DICTIONARY_PAGE:
            yield Page(row, 0, size)
        elif kind in (DATA_PAGE, DATA_PAGE_V2):
            values = header.get(5, {}).get(1) if kind == DATA_PAGE else header.get(8, {}).get(3)
            if values is None or values < 0:
                raise DataError(f"{where} is not a readable Parquet file: a data page without its row count")
            yield Page(row, values, size)
            row += values
        position = reader.end() + stored


class _Header:
    """Just enough of Thrift's compact protocol to read a page header's numbers and skip the rest."""

    def __init__(self, file: BinaryIO, start: int, where: Any) -> None:
        self.file, self.where = file, where
        self.start, self.base, self.data, self.at = start, start, b"", 0  # data: the file from `base`; at: next

    def end(self) -> int:
        """The file position just past what was read."""
        return self.base + self.at

    def struct(self, wanted: dict[int, Any], depth: int) -> dict[int, Any]:
        """The fields of a struct named in `wanted` (None: an integer, a dict: a struct of those), others skipped."""
        if depth > DEPTH:
            self._refuse("structs nested too deep")
        found: dict[int, Any] = {}
        field = 0
        while (head := self._byte()) != 0:
            kind, delta = head & 0x0F, head >> 4
            field = field + delta if delta else self._zigzag()
            want = wanted.get(field, False)
            if want is None and kind in (4, 5, 6):
                found[field] = self._zigzag()
            elif isinstance(want, dict) and kind == 12:
                found[field] = self.struct(want, depth + 1)
            else:
                self._skip(kind, depth)
        return found

    def _skip(self, kind: int, depth: int) -> None:
        if kind in (1, 2):  # a boolean, held in the field's own byte
            return
        if kind == 3:
            self._byte()
        elif kind in (4, 5, 6):
            self._varint()
        elif kind == 7:
            self._bytes(8)
        elif kind == 8:
            length = self._varint()  # (not `self.at += self._varint()`: that adds to `at` as it was before)
            self.at += length  # statistics' min and max may be megabytes: not read
        elif kind in (9, 10):
            head = self._byte()
            count = self._varint() if head >> 4 == 15 else head >> 4
            for _ in range(count):
                self._element(head & 0x0F, depth)
        elif kind == 11:
            count = self._varint()
            if count:
                types = self._byte()
                for _ in range(count):
                    self._element(types >> 4, depth)
                    self._element(types & 0x0F, depth)
        elif kind == 12:
            self.struct({}, depth + 1)
        else:
            self._refuse(f"an unknown field type {kind}")

    def _element(self, kind: int, depth: int) -> None:
        if kind in (1, 2):  # a boolean in a list takes a byte of its own
            self._byte()
        else:
            self._skip(kind, depth)

    def _varint(self) -> int:
        value = shift = 0
        while True:
            byte = self._byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                self._refuse("a number too long")

    def _zigzag(self) -> int:
        value = self._varint()
        return (value >> 1) ^ -(value & 1)

    def _byte(self) -> int:
        return self._bytes(1)[0]

    def _bytes(self, count: int) -> bytes:
        if self.at + count > len(self.data):  # read on from the file, a little ahead
            if self.base + self.at - self.start > HEADER_BYTES:
                self._refuse("a page header too long")
            self.base, self.at = self.base + self.at, 0
            self.file.seek(self.base)
            self.data = self.file.read(max(count, READ_AHEAD))
            if len(self.data) < count:
                self._refuse("a page header cut short")
        self.at += count
        return self.data[self.at - count : self.at]

    def _refuse(self, why: str) -> None:
        raise DataError(f"{self.where} is not a readable Parquet file: {why}")
