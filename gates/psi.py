"""The population stability index, one formula for the gate's offline drift and the rollout's live drift."""

from __future__ import annotations

import math
from collections.abc import Sequence

PSI_FLOOR = 1e-4  # share used for an empty bin, so the logarithm stays finite (deploy/prometheus's rules use it too)


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two distributions' shares over the same bins, each share floored at PSI_FLOOR."""
    return sum(
        (max(a, PSI_FLOOR) - max(e, PSI_FLOOR)) * math.log(max(a, PSI_FLOOR) / max(e, PSI_FLOOR))
        for e, a in zip(expected, actual, strict=True)
    )
