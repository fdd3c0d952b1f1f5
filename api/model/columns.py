"""The request path's one shape of decoded input: feature name -> its values, in record order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

# One feature's values in record order, as a client sent them (None where missing), or as float64 for a numeric
# feature on the fast paths. A client's values are JSON scalars of any type until a schema checks them.
Values: TypeAlias = Sequence[Any] | npt.NDArray[np.float64]
# A request by column: feature name -> its values.
Columns: TypeAlias = Mapping[str, Values]
