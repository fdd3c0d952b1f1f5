"""The one cast of input values to the frame a fitted pipeline takes, shared by training, the gate, the API and scoring.

Numeric features become float64 (text is parsed, None and blanks are NaN),
the others object columns with NaN for missing: what the imputers were fitted on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

# One feature's values in record order, as a client sent them (None where missing), or as float64 for a numeric
# feature on the fast paths. A client's values are JSON scalars of any type until a schema checks them.
Values: TypeAlias = Sequence[Any] | npt.NDArray[np.float64]
# A request by column: feature name -> its values.
Columns: TypeAlias = Mapping[str, Values]


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
    values: pd.DataFrame | Columns, features: Iterable[Typed], index: pd.Index | None = None
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
