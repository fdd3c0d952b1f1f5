"""/invocations CSV bodies read as pandas reads them: UTF-8, closed quotes, a unique header, finite numbers."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass

from api.model.invocation_input import (
    MAX_COLUMNS,
    MAX_PROBLEMS,
    Refusal,
    batch_limit,
    not_finite,
    problem,
    refuse,
    safe_message,
    seen_before,
)
from api.model.schema import FeatureSpec, quote

# --- CSV -----------------------------------------------------------------------------------------

# The cells pandas' float parser takes (and the ones it reads as missing): used to name the cell it refused.
_PANDAS_NUMBER = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf|infinity)\s*", re.I)
_PANDAS_BOOLEAN = frozenset({"True", "TRUE", "true", "False", "FALSE", "false"})  # 1/0, in a column of only these
_PANDAS_MISSING = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


@dataclass
class CsvTable:
    """A CSV request as read: its text (what MLflow parses), its header and its rows of cells."""

    text: str
    header: list[str]
    rows: list[list[str]]


def read_csv(body: bytes, features: list[FeatureSpec], limit: int) -> CsvTable:
    """The CSV text, its header and rows, checked; a Refusal naming the first problems otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"the CSV body is not UTF-8 text (byte {exc.start}): binary data is not CSV") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise refuse(f"line {line}: the CSV body holds a NUL character: binary data is not CSV")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        for row in reader:
            if not row:  # a blank line: pandas skips it
                continue
            if header is None:
                header = [row[0].removeprefix("\ufeff"), *row[1:]]  # pandas drops a byte-order mark
                _check_header(header, features)
                continue
            if len(rows) == limit:
                raise batch_limit(f"more than {limit}", limit)
            if len(row) != len(header):
                raise refuse(
                    f"line {reader.line_num} has {len(row)} fields where the header names {len(header)}", len(rows)
                )
            rows.append(row)
    except csv.Error as exc:
        why = "a quoted field is not closed" if "unexpected end of data" in str(exc) else safe_message(str(exc))
        raise refuse(f"line {reader.line_num}: malformed CSV: {why}") from None
    if header is None:
        raise refuse("the CSV body is empty: send a header row naming the columns, then one row per record")
    _check_csv_numbers(header, rows, features)
    return CsvTable(text, header, rows)


def _check_header(header: list[str], features: list[FeatureSpec]) -> None:
    if len(header) > MAX_COLUMNS:
        raise refuse(
            f"the CSV header names {len(header)} columns: at most {MAX_COLUMNS} are read "
            f"(this model reads {len(features)})"
        )
    seen: set[str] = set()
    twice = [name for name in header if seen_before(seen, name)]
    if twice:
        raise Refusal(
            [problem("appears more than once in the CSV header", field=name) for name in dict.fromkeys(twice)]
        )


def _check_csv_numbers(header: list[str], rows: list[list[str]], features: list[FeatureSpec]) -> None:
    """Infinite numbers (`inf`, `-Infinity`, `1e400`) in numeric columns; `nan` is pandas' missing value."""
    position = {name: j for j, name in enumerate(header)}
    problems = []
    for spec in features:
        j = position.get(spec.name)
        if j is None or not spec.numeric:
            continue
        for record, row in enumerate(rows):
            try:
                value = float(row[j])
            except ValueError:
                continue  # not a number at all: pandas refuses it, explain_csv names it
            if math.isinf(value):
                problems.append(problem(not_finite(row[j]), record, spec.name))
                if len(problems) == MAX_PROBLEMS:
                    raise Refusal(problems)
    if problems:
        raise Refusal(problems)


def explain_csv(table: CsvTable, features: list[FeatureSpec]) -> Refusal | None:
    """When pandas refused a CSV read_csv passed: the first cell of each numeric column it cannot read."""
    position = {name: j for j, name in enumerate(table.header)}
    problems = []
    for spec in features:
        j = position.get(spec.name)
        if j is None or spec.type not in ("double", "float"):
            continue
        cells = [(record, row[j]) for record, row in enumerate(table.rows) if row[j] not in _PANDAS_MISSING]
        if cells and all(cell in _PANDAS_BOOLEAN for _, cell in cells):
            continue
        for record, cell in cells:
            if not _PANDAS_NUMBER.fullmatch(cell):
                problems.append(problem(f"{quote(cell)} is not a number", record, spec.name))
                break
    return Refusal(problems) if problems else None
