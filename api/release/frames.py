"""The one cast of input values to the frame a fitted pipeline takes, shared by training, the gate, the API and scoring.

Numeric features become float64 (text is parsed, None and blanks are NaN),
the others object columns with NaN for missing: what the imputers were fitted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd


class Typed(Protocol):
    """Anything that names a feature and says whether it is numeric (FeatureSpec, the pipeline's Feature)."""

    @property
    def name(self) -> str:
        """The feature's column name."""
        ...

    @property
    def numeric(self) -> bool:
        """True for a numeric feature (cast to float64), False for a categorical one."""
        ...


@dataclass(frozen=True)
class Column:
    """A feature read from a run's feature_schema.json: its name and whether it is numeric."""

    name: str
    numeric: bool


def typed_frame(
    values: pd.DataFrame | Mapping[str, Any], features: Iterable[Typed], index: pd.Index | None = None
) -> pd.DataFrame:
    """`values` (a frame, or columns by name) as the frame the pipeline was trained on, in `features`' order."""
    if index is None and isinstance(values, pd.DataFrame):
        index = values.index
    if index is None and not isinstance(values, pd.DataFrame):
        fast = _plain_columns(values, features)
        if fast is not None:
            return fast
    out = {}
    for feature in features:
        column = pd.Series(values[feature.name], index=index)
        if feature.numeric:
            out[feature.name] = pd.to_numeric(column, errors="coerce").astype("float64")
        else:
            out[feature.name] = column.astype(object).where(column.notna(), np.nan)
    return pd.DataFrame(out, index=index)


def _plain_columns(values: Mapping[str, Any], features: Iterable[Typed]) -> pd.DataFrame | None:
    """typed_frame's frame for columns of plain values (what the API decodes), without a Series per cast.

    Numbers must be a float array, or floats, ints and None (text in a numeric column, or a bool, takes the
    general path: to_numeric decides those); text columns keep their values with None and NaN made NaN.
    About 8x faster on one record.
    """
    out: dict[str, pd.Series] = {}
    for feature in features:
        column = values[feature.name]
        if feature.numeric:
            if isinstance(column, np.ndarray) and column.dtype.kind == "f":
                out[feature.name] = pd.Series(column.astype(np.float64), copy=False)
                continue
            if not all(v is None or (isinstance(v, float | int) and not isinstance(v, bool)) for v in column):
                return None
            out[feature.name] = pd.Series(np.array(column, dtype=np.float64), copy=False)
        else:
            cells = np.empty(len(column), dtype=object)
            cells[:] = [np.nan if v is None or (isinstance(v, float) and v != v) else v for v in column]
            out[feature.name] = pd.Series(cells, dtype=object, copy=False)
    return pd.DataFrame(out)
