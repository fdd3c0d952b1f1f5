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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from api.model.schema import FeatureSpec, RecordValidator, RequestError
from pipeline.scoring.column_values import (
    BOOLEANS,
    LONG_NUMBER,
    MISSING,
    NUMBER_TEXT,
    Coded,
    Values,
    column_values,
    empty_values,
    flat,
    take_values,
)


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
                values, missing, bad = column_values(spec, flat(batch.column(spec.name)))
            else:
                values, missing, bad = empty_values(spec, rows), np.ones(rows, dtype=bool), np.zeros(rows, dtype=bool)
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
            columns = {name: take_values(values, keep) for name, values in columns.items()}
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
