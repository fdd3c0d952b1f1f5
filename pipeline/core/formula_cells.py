"""CSV cells a spreadsheet would run as formulas, neutralised (OWASP's CSV-injection advice).

A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is
run by Excel, LibreOffice and Google Sheets as a formula (`=HYPERLINK(...)`,
`@SUM(...)`, `-2+3`). Such a cell gets a leading `'`, which spreadsheets show
as text and do not evaluate. A plain number (`-3.5`, `+1e3`) is left as it is,
so numeric columns stay numbers.
"""

from __future__ import annotations

import re

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
