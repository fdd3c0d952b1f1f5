"""One feature's column as the values a client would send the API, for a whole batch at once.

Each feature's column is read with pyarrow and numpy (column_values): numbers
parsed from text or taken as typed, booleans from `true`/`false`, text stripped
and coded (Coded: each distinct value held once). Alongside come the rows whose
field is missing and the rows a vectorised check cannot decide, which the
column validator (column_validator.py) hands to the API's RecordValidator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from api.model.schema import FeatureSpec

# Decimal notation as pandas.to_numeric reads it (ASCII digits only). Every string pyarrow's
# float cast turns into a finite number matches it, and every match casts (tests check both).
NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
NUMBER_TEXT = re.compile(NUMBER, re.ASCII)
# Longer number text is left to pandas, as before: it refuses an integer of more than 4,300 digits
# (Python's int limit) that a float parse would read as infinity, or, with leading zeros, as a number.
LONG_NUMBER = 100
# The ASCII characters str.strip() removes; trimming only these is never more than strip() does.
ASCII_SPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_SPACE_BYTE = np.zeros(256, dtype=bool)  # per byte value: is it one of ASCII_SPACE
_SPACE_BYTE[np.frombuffer(ASCII_SPACE.encode(), dtype=np.uint8)] = True
MISSING = None  # a missing field: left out of the record, None in a column
BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class Coded:
    """Text values as codes into `values`; code -1 is a missing value."""

    codes: np.ndarray
    values: list[str]

    def take(self, rows: np.ndarray) -> Coded:
        """The values at `rows` (positions)."""
        return Coded(self.codes[rows], self.values)

    def tolist(self) -> list[str | None]:
        """The values as text, None for missing (what the API's columns hold)."""
        lookup = [*self.values, None]  # code -1 reads the last entry
        return [lookup[c] for c in self.codes.tolist()]

    def __len__(self) -> int:
        return len(self.codes)


# A validated column: float64 with NaN for missing (numbers), Coded (text), object array of bool/None (booleans).
Values = np.ndarray | Coded


def column_values(spec: FeatureSpec, column: pa.Array) -> tuple[Values, np.ndarray, np.ndarray]:
    """(values, missing, flagged) for one feature; a flagged cell is one the validator must look at."""
    kind = column.type
    textual = _is_text(kind) or (pa.types.is_dictionary(kind) and _is_text(kind.value_type))
    if spec.numeric:
        if textual and pa.types.is_dictionary(kind) and len(column.dictionary) <= len(column):
            return _numbers_per_distinct_text(column)
        if textual:
            return _numbers_from_text(_decoded(column))
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return _numbers(column)
    elif spec.type == "boolean":
        if textual:
            return _booleans_from_text(column)
        if pa.types.is_boolean(kind):
            missing = _nulls(column)
            return np.asarray(column.to_pylist(), dtype=object), missing, np.zeros(len(column), dtype=bool)
    elif textual:
        coded = _coded(column)
        return coded, coded.codes < 0, np.zeros(len(column), dtype=bool)
    # Any other pairing of column type and feature: the validator decides each value.
    missing = _nulls(column)
    return empty_values(spec, len(column)), missing, ~missing


def _numbers_from_text(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths, first, last = _layout(column)
    if _SPACE_BYTE[first].any() or _SPACE_BYTE[last].any():
        column = pc.utf8_trim(column, ASCII_SPACE)
        lengths, _, _ = _layout(column)
    missing = (lengths == 0) | _nulls(column)
    castable = pc.if_else(pa.array(missing), pa.scalar(None, column.type), column) if missing.any() else column
    try:
        values = _float_array(pc.cast(castable, pa.float64()))
        text_ok = ~missing
    except pa.ArrowInvalid:  # some cell is not a number: find which, cast the others
        matched = pc.match_substring_regex(column, f"^{NUMBER}$").fill_null(False)
        text_ok = matched.to_numpy(zero_copy_only=False) & ~missing
        values = _float_array(
            pc.cast(pc.if_else(pa.array(text_ok), column, pa.scalar(None, column.type)), pa.float64())
        )
    # inf, nan and 1e999 parse, and are refused; long text is for pandas to decide (client_values).
    flagged = ~missing & ~(text_ok & np.isfinite(values) & (lengths <= LONG_NUMBER))
    return values, missing, flagged


def _numbers_per_distinct_text(column: pa.DictionaryArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_numbers_from_text of a dictionary-encoded column, run once per distinct text: a cell's verdict is its text's."""
    dictionary = _decoded(column.dictionary)
    values, missing, flagged = _numbers_from_text(pa.concat_arrays([dictionary, pa.nulls(1, dictionary.type)]))
    codes = column.indices.cast(pa.int64())
    rows = (codes.fill_null(len(dictionary)) if codes.null_count else codes).to_numpy()  # a null: the appended null
    return values[rows], missing[rows], flagged[rows]


def _numbers(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = _nulls(column)
    values = _float_array(pc.cast(column, pa.float64(), safe=False))
    flagged = ~missing & ~np.isfinite(values)
    return values, missing, flagged


def _booleans_from_text(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dictionary, codes = _dictionary(column)
    table = np.empty(len(dictionary) + 1, dtype=object)  # code -1 (a null) reads the last entry: missing
    for i, value in enumerate(dictionary):
        text = (value or "").strip()
        table[i] = MISSING if text == "" else BOOLEANS.get(text.lower(), text)
    missing = np.array([v is None for v in table], dtype=bool)
    bad = np.array([not (v is None or isinstance(v, bool)) for v in table], dtype=bool)
    values = table[codes]
    values[bad[codes]] = MISSING
    return values, missing[codes], bad[codes]


def _coded(column: pa.Array) -> Coded:
    """Stripped text as codes; blank text and nulls get code -1."""
    dictionary, codes = _dictionary(column)
    values: list[str] = []
    seen: dict[str, int] = {}
    remap = np.full(len(dictionary) + 1, -1, dtype=np.int64)  # code -1 (a null) reads the last entry: missing
    for i, value in enumerate(dictionary):
        text = (value or "").strip()
        if text:
            if text not in seen:
                seen[text] = len(values)
                values.append(text)
            remap[i] = seen[text]
    return Coded(remap[codes], values)


def _dictionary(column: pa.Array) -> tuple[list[str | None], np.ndarray]:
    """The distinct texts of a column and each row's index into them (-1 for null)."""
    encoded = column if pa.types.is_dictionary(column.type) else pc.dictionary_encode(column)
    if len(encoded.dictionary) > len(encoded):  # Parquet hands each batch its row group's whole dictionary
        encoded = pc.dictionary_encode(encoded.dictionary_decode())
    dictionary = pc.cast(encoded.dictionary, pa.string()).to_pylist()
    indices = encoded.indices if encoded.indices.null_count == 0 else encoded.indices.fill_null(-1)
    codes = indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
    return dictionary, codes


def empty_values(spec: FeatureSpec, rows: int) -> Values:
    """A column of `rows` missing values for `spec` (a feature the batch does not have)."""
    if spec.numeric:
        return np.full(rows, np.nan)
    if spec.type == "boolean":
        return np.full(rows, MISSING, dtype=object)
    return Coded(np.full(rows, -1, dtype=np.int64), [])


def take_values(values: Values, rows: np.ndarray) -> Values:
    """The values at `rows` (positions), Coded or an array."""
    return values.take(rows) if isinstance(values, Coded) else values[rows]


# --- arrow helpers ------------------------------------------------------------------------------


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def flat(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of a column (a table's chunks combined)."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _decoded(column: pa.Array) -> pa.Array:
    """Plain string (32-bit offsets) of a text column, whatever its encoding."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def _nulls(column: pa.Array) -> np.ndarray:
    if column.null_count == 0:
        return np.zeros(len(column), dtype=bool)
    return np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _float_array(column: pa.Array) -> np.ndarray:
    """float64 numpy values (nulls as NaN), writable."""
    return np.array(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _layout(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell of a string array: its length in bytes, its first and its last byte (0 when empty)."""
    rows = len(column)
    _, offsets_buffer, data_buffer = column.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[column.offset : column.offset + rows + 1]
    lengths = np.diff(offsets)
    if data_buffer is None or rows == 0 or offsets[-1] == offsets[0]:
        empty = np.zeros(rows, dtype=np.uint8)
        return lengths, empty, empty.copy()
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    end = len(data) - 1
    first = data[np.minimum(offsets[:-1], end)]
    last = data[np.clip(offsets[1:] - 1, 0, end)]
    blank = lengths == 0
    first[blank] = 0
    last[blank] = 0
    return lengths, first, last
