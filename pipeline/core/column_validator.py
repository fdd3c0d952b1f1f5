"""Validation by column: the API's verdicts, reasons and values for a whole batch of rows at once.

Batch scoring turns each cell into the value a client would send the API
(`client_values`: blank or spaces are missing, numbers are parsed, `true` and
`false` are booleans, other text is stripped) and holds it to the API's
RecordValidator (api/model/schema.py). Record by record that costs
microseconds a row. Here each feature's column is checked at once with
pyarrow and numpy; only the rows a column check flags are looked at one by
one, and the API's own RecordValidator decides them and words their reason.
So a good row costs a few vectorised passes, a bad row a validator call, and
the verdicts, messages and values are the API's (tests/unit/test_column_validator.py
compares both on the API's hostile and generated cases, row for row).

Cells and the values they stand for:

- text (CSV, or a Parquet string column) is stripped as Python's str.strip
  does; nothing left, or a null, is a missing field (refused "is missing" when
  the field is required).
- a number field takes text in decimal notation (`12`, `-3.5`, `.5`, `1e3`,
  `1.E-5`, the grammar `pandas.to_numeric` reads); its value is the correctly
  rounded double, as Python's float() and the API's JSON parser give it.
  Infinite values (`inf`, `1e999`) are refused as not finite, other text as
  not a number, quoting the text.
- a boolean field takes `true` or `false` in any case.
- a typed Parquet value is the value itself: an integer or floating number
  feeds a number field (NaN and infinities refused), a boolean a boolean
  field; any other pairing goes to the validator, which accepts or words it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from api.model.schema import FeatureSpec, RecordValidator, RequestError

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


@dataclass(frozen=True)
class Checked:
    """One batch, validated: which rows are good, why the others are not, and the good rows' values."""

    good: np.ndarray  # bool per batch row
    reasons: dict[int, str]  # batch position -> the validator's message, without "record 0: "
    columns: dict[str, Values]  # per feature, the good rows' values in batch order

    @property
    def scored(self) -> int:
        """How many rows are good."""
        return int(self.good.sum())


class ColumnValidator:
    """RecordValidator's decisions for whole pyarrow batches; columns missing from a batch are missing fields."""

    def __init__(self, features: Sequence[FeatureSpec], validator: RecordValidator) -> None:
        self.features = list(features)
        self.validator = validator

    def check(self, batch: pa.RecordBatch | pa.Table) -> Checked:
        """Validate every row of `batch`; only flagged rows meet the RecordValidator."""
        rows = batch.num_rows
        names = set(batch.schema.names)
        flagged = np.zeros(rows, dtype=bool)
        columns: dict[str, Values] = {}
        for spec in self.features:
            if spec.name in names:
                values, missing, bad = _column(spec, _flat(batch.column(spec.name)))
            else:
                values, missing, bad = _empty(spec, rows), np.ones(rows, dtype=bool), np.zeros(rows, dtype=bool)
            flagged |= bad
            if spec.required:
                flagged |= missing
            columns[spec.name] = values
        reasons: dict[int, str] = {}
        good = ~flagged
        if flagged.any():
            positions = np.flatnonzero(flagged)
            records = client_records(self.features, batch, positions)
            for position, record in zip(positions.tolist(), records, strict=True):
                try:
                    [accepted] = self.validator.validate({"records": [record]})
                except RequestError as exc:
                    reasons[position] = str(exc).replace("record 0: ", "")
                else:  # the column check was stricter than the validator: the validator's values count
                    good[position] = True
                    _put(columns, self.features, position, accepted)
        if not good.all():
            keep = np.flatnonzero(good)
            columns = {name: _take(values, keep) for name, values in columns.items()}
        return Checked(good, reasons, columns)


def client_values(spec: FeatureSpec, cells: Sequence[Any]) -> list[Any]:
    """What batch scoring sends the validator for each cell of one feature (None: the field is left out).

    Text is stripped; blank is missing; a number field parses decimal text to its
    correctly rounded double (pandas decides what else is a number: infinities), a
    boolean field `true`/`false`; text that does not parse is sent as text, which
    the validator refuses quoting it. A value that is not text is sent as it is.
    """
    out: list[Any] = []
    odd: list[int] = []  # number fields: stripped text outside NUMBER (or long), for pandas to decide
    for cell in cells:
        if cell is None:
            out.append(MISSING)
            continue
        if not isinstance(cell, str):
            out.append(cell)
            continue
        text = cell.strip()
        if text == "":
            out.append(MISSING)
        elif spec.numeric:
            if len(text) <= LONG_NUMBER and NUMBER_TEXT.fullmatch(text):
                out.append(float(text))
            else:
                odd.append(len(out))
                out.append(text)
        elif spec.type == "boolean":
            out.append(BOOLEANS.get(text.lower(), text))
        else:
            out.append(text)
    if odd:
        import pandas as pd  # rare, and pandas takes a while to import

        parsed = pd.to_numeric(pd.Series([out[i] for i in odd], dtype=object), errors="coerce")
        for i, number in zip(odd, parsed.tolist(), strict=True):
            if number == number:  # not NaN: pandas reads it as a number (an infinity, long text)
                out[i] = float(out[i]) if NUMBER_TEXT.fullmatch(out[i]) else float(number)
    return out


def client_records(
    features: Iterable[FeatureSpec], batch: pa.RecordBatch | pa.Table, positions: np.ndarray
) -> list[dict[str, Any]]:
    """The records a client would send for the batch rows at `positions` (missing fields left out)."""
    names = set(batch.schema.names)
    index = pa.array(positions, type=pa.int64())
    records: list[dict[str, Any]] = [{} for _ in range(len(positions))]
    for spec in features:
        if spec.name not in names:
            continue
        cells = batch.column(spec.name).take(index).to_pylist()
        for record, value in zip(records, client_values(spec, cells), strict=True):
            if value is not MISSING:
                record[spec.name] = value
    return records


# --- one column ---------------------------------------------------------------------------------


def _column(spec: FeatureSpec, column: pa.Array) -> tuple[Values, np.ndarray, np.ndarray]:
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
    return _empty(spec, len(column)), missing, ~missing


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


def _empty(spec: FeatureSpec, rows: int) -> Values:
    if spec.numeric:
        return np.full(rows, np.nan)
    if spec.type == "boolean":
        return np.full(rows, MISSING, dtype=object)
    return Coded(np.full(rows, -1, dtype=np.int64), [])


def _put(columns: dict[str, Values], features: list[FeatureSpec], position: int, record: dict[str, Any]) -> None:
    """Write a validated record's values into the columns at `position`."""
    for spec in features:
        value = record.get(spec.name)
        column = columns[spec.name]
        if isinstance(column, Coded):
            if value is None:
                column.codes[position] = -1
            else:
                if value not in column.values:
                    column.values.append(value)
                column.codes[position] = column.values.index(value)
        elif spec.numeric:
            column[position] = np.nan if value is None else float(value)
        else:
            column[position] = value


def _take(values: Values, rows: np.ndarray) -> Values:
    return values.take(rows) if isinstance(values, Coded) else values[rows]


# --- arrow helpers ------------------------------------------------------------------------------


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _flat(column: pa.Array | pa.ChunkedArray) -> pa.Array:
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
