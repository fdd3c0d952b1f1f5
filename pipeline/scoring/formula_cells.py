"""CSV cells a spreadsheet would run as formulas, neutralised (OWASP's CSV-injection advice).

A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is
run by Excel, LibreOffice and Google Sheets as a formula (`=HYPERLINK(...)`,
`@SUM(...)`, `-2+3`). Such a cell gets a leading `'`, which spreadsheets show
as text and do not evaluate. A plain number (`-3.5`, `+1e3`) is left as it is,
so numeric columns stay numbers.

The rule is `neutralise`, a cell at a time; `neutralised` applies it to a
pyarrow batch (the CSV writer's), `neutralise_frame` to a pandas frame.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.scoring.column_values import NUMBER

if TYPE_CHECKING:  # pandas only for neutralise_frame: not imported before the input is being read
    import pandas as pd

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise(cell: object) -> object:
    """`cell` with a leading `'` if a spreadsheet would run it as a formula; anything else unchanged."""
    if isinstance(cell, str) and cell.startswith(TRIGGERS) and not PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `neutralise` applied to every text cell (a copy if a cell changed, else `frame`)."""
    import pandas as pd

    out = frame
    for position, dtype in enumerate(frame.dtypes):
        if pd.api.types.is_numeric_dtype(dtype):
            continue
        column = frame.iloc[:, position]
        try:
            suspect = column.str[:1].isin(TRIGGERS).to_numpy(dtype=bool)
        except AttributeError:  # no text in this column
            continue
        if suspect.any():
            if out is frame:
                out = frame.copy()
            out.iloc[suspect.nonzero()[0], position] = column[suspect].map(neutralise).to_numpy()
    return out


def neutralised(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` with every text cell a spreadsheet would run as a formula prefixed with `'` (neutralise).

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
    fixed = [neutralise(t) for t in texts]  # exact: Unicode digits make a plain number too
    mask = np.zeros(len(column), dtype=bool)
    changed = [i for i, (a, b) in enumerate(zip(texts, fixed, strict=True)) if a != b]
    if not changed:
        return column
    mask[odd[changed]] = True
    return pc.replace_with_mask(column, pa.array(mask), pa.array([fixed[i] for i in changed], type=column.type))


@functools.cache
def _trigger_bytes() -> np.ndarray:
    """Per byte value: does a cell starting with it look like a formula (TRIGGERS)."""
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
