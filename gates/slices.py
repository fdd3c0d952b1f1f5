"""Slices of the test rows: one per value of a categorical column, a few bins of a numeric one."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

# A numeric column with at most this many distinct values is sliced per value, else into quartile bins.
MAX_NUMERIC_VALUES = 10
MISSING = "(missing)"


@dataclass(frozen=True)
class Slice:
    """A subset of the test rows: a value or a bin of one column."""

    column: str
    label: str  # e.g. "Contract = Month-to-month" or "9 ≤ tenure < 29"
    rows: NDArray[np.bool_]  # mask over the test rows


def slices_of(frame: pd.DataFrame, column: str) -> list[Slice]:
    """The slices of one column, in a stable order (values sorted, bins ascending, missing last)."""
    values = frame[column]
    numeric = pd.api.types.is_numeric_dtype(values)
    present = values.notna().to_numpy()
    out: list[Slice] = []
    if numeric and values.nunique() > MAX_NUMERIC_VALUES:
        out += _bins(column, values.to_numpy(dtype=float), present)
    else:
        for value in sorted(values.dropna().unique(), key=lambda v: (str(type(v)), v)):
            shown = _number(value) if numeric else str(value)
            out.append(Slice(column, f"{column} = {shown}", (values == value).to_numpy()))
    if not present.all():
        out.append(Slice(column, f"{column} {MISSING}", ~present))
    return out


def _bins(column: str, x: NDArray[np.float64], present: NDArray[np.bool_]) -> list[Slice]:
    edges = np.unique(np.quantile(x[present], [0.25, 0.5, 0.75]))
    bounds = [-np.inf, *edges, np.inf]
    out = []
    for low, high in itertools.pairwise(bounds):
        rows = present & (x >= low) & (x < high)
        if np.isinf(low):
            label = f"{column} < {_number(high)}"
        elif np.isinf(high):
            label = f"{column} ≥ {_number(low)}"
        else:
            label = f"{_number(low)} ≤ {column} < {_number(high)}"
        out.append(Slice(column, label, rows))
    return out


def _number(value: float) -> str:
    return f"{float(value):g}"
