"""The one cast of input values to the frame a fitted pipeline takes, shared by training, the gate, the API and scoring.

Numeric features become float64 (text is parsed, None and blanks are NaN),
the others object columns with NaN for missing: what the imputers were fitted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd


class Typed(Protocol):
    """Anything that names a feature and says whether it is numeric (FeatureSpec, the pipeline's Feature)."""

    @property
    def name(self) -> str: ...

    @property
    def numeric(self) -> bool: ...


@dataclass(frozen=True)
class Column:
    """A feature read from a run's feature_schema.json: its name and whether it is numeric."""

    name: str
    numeric: bool


def typed_frame(
    values: pd.DataFrame | Mapping[str, Sequence[Any]], features: Iterable[Typed], index: pd.Index | None = None
) -> pd.DataFrame:
    """`values` (a frame, or columns by name) as the frame the pipeline was trained on, in `features`' order."""
    if index is None and isinstance(values, pd.DataFrame):
        index = values.index
    out = {}
    for feature in features:
        column = pd.Series(values[feature.name], index=index)
        if feature.numeric:
            out[feature.name] = pd.to_numeric(column, errors="coerce").astype("float64")
        else:
            out[feature.name] = column.astype(object).where(column.notna(), np.nan)
    return pd.DataFrame(out, index=index)
