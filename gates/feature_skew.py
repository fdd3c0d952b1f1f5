"""Training/serving skew: the same customers' features read online and offline at the same instant, compared.

Pure: both reads come in as frames keyed by the entity id (the online store's values, and the offline
store's point-in-time values at the online rows' event timestamps). A number may differ by `tolerance`
(absolutely or relatively, whichever is larger); text, and a value present on one side only, must match. A
number against text, or a bool against anything else, differs whatever it prints as ("1" against 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from numbers import Real
from typing import Any

import pandas as pd

from gates.rules import RuleResult

RULE = "feature_skew"


@dataclass(frozen=True)
class FeatureSkew:
    """One feature whose online and offline values disagree for some of the sampled entities."""

    view: str
    feature: str
    compared: int  # entities read on both sides
    differing: int
    example: tuple[str, Any, Any]  # (entity id, online value, offline value) of the first difference
    max_abs_diff: float | None  # numbers only

    @property
    def name(self) -> str:
        """view.feature."""
        return f"{self.view}.{self.feature}"


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (so reports show 77.3, not np.float64(77.3))."""
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real | Decimal):
        return None
    return float(value)


def differ(online: Any, offline: Any, tolerance: float) -> tuple[bool, float | None]:
    """Whether two values disagree, and their absolute difference when both are numbers."""
    online, offline = _plain(online), _plain(offline)  # np.True_ is a bool, np.int64 a number
    if _missing(online) or _missing(offline):
        return _missing(online) != _missing(offline), None
    if isinstance(online, bool) != isinstance(offline, bool):  # True against "True" or 1: the types disagree
        return True, None
    a, b = _number(online), _number(offline)
    if (a is None) != (b is None):  # a number on one side only ("1" against 1): the types disagree
        return True, None
    if a is not None and b is not None:
        gap = abs(a - b)
        return not math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance), gap
    return str(online) != str(offline), None


def compare(
    online: pd.DataFrame,
    offline: pd.DataFrame,
    key: str,
    views: Mapping[str, Sequence[str]],
    tolerance: float,
) -> list[FeatureSkew]:
    """Every feature of `views` whose values differ between the two reads, in the views' order.

    `online` and `offline` each hold one row per entity (`key`) and a column per feature; `offline` may hold
    one row per (entity, view) instead, marked by a `view` column, when each view was read at its own instant.
    """
    on = online.drop_duplicates(key).set_index(key)
    skews = []
    for view, features in views.items():
        rows = offline[offline["view"] == view] if "view" in offline.columns else offline
        off = rows.drop_duplicates(key).set_index(key)
        ids = [i for i in on.index if i in off.index]
        for feature in features:
            differing, example, widest = 0, None, None
            for entity in ids:
                a, b = _plain(on.at[entity, feature]), _plain(off.at[entity, feature])
                different, gap = differ(a, b, tolerance)
                if not different:
                    continue
                differing += 1
                example = example or (str(entity), a, b)
                if gap is not None:
                    widest = gap if widest is None else max(widest, gap)
            if differing and example is not None:
                skews.append(FeatureSkew(view, feature, len(ids), differing, example, widest))
    return skews


def skew_rule(service: str, sampled: int, skews: Sequence[FeatureSkew], tolerance: float) -> RuleResult:
    """The gate's verdict: no sampled feature may disagree between online and offline (beyond `tolerance`)."""
    how = (
        f"feature service {service!r}: {sampled} entities read online and offline at the online rows' "
        f"timestamps (numbers within {tolerance:g})"
    )
    if not skews:
        return RuleResult(RULE, RULE, 0.0, 0.0, True, f"{how}; every feature agrees")
    parts = []
    for s in skews:
        entity, on, off = s.example
        gap = "" if s.max_abs_diff is None else f", max |Δ| {s.max_abs_diff:g}"
        parts.append(
            f"{s.name} differs for {s.differing}/{s.compared}{gap} (e.g. {entity}: online {on!r}, offline {off!r})"
        )
    detail = f"{how}; {len(skews)} feature(s) disagree: " + "; ".join(parts)
    return RuleResult(RULE, RULE, 0.0, float(len(skews)), False, detail)
