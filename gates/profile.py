"""A data profile per run, and what changed between production's training data and the candidate's.

Numeric columns keep their percentiles 0..100, so the population stability
index is computed from two profiles alone: production's deciles are the bins,
and each side's share per bin is read off its own percentiles (1 % resolution).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from gates.psi import psi

MAX_CATEGORIES = 100  # the most frequent categories are kept; the rest count as "other"


class ColumnProfile(TypedDict):
    """One column of a profile: numeric columns have `percentiles`, the others `categories` and `other_share`."""

    kind: str  # "numeric" or "categorical"
    missing_share: float
    percentiles: NotRequired[list[float]]  # percentiles 0..100; empty when every value is missing
    categories: NotRequired[dict[str, float]]  # value -> share of rows, the most frequent first
    other_share: NotRequired[float]  # rows with a value beyond the MAX_CATEGORIES kept


class Profile(TypedDict):
    """A data profile, as profile() builds it and runs log it (JSON)."""

    rows: int
    columns: dict[str, ColumnProfile]


# A column whose kind changed from production's training data to the candidate's.
KindChange = TypedDict("KindChange", {"column": str, "from": str, "to": str})


class MissingShares(TypedDict):
    """A column's share of missing values on each side, when it moved by `missing_change` or more."""

    production: float
    candidate: float


def profile(frame: pd.DataFrame, kinds: dict[str, str]) -> Profile:
    """Type, missing share, categories with shares or numeric percentiles, per column."""
    columns: dict[str, ColumnProfile] = {}
    for name, kind in kinds.items():
        values = frame[name]
        entry: ColumnProfile = {"kind": kind, "missing_share": _share(values.isna().sum(), len(values))}
        present = values.dropna()
        if kind == "numeric":
            entry["percentiles"] = (
                [float(v) for v in np.percentile(present.to_numpy(dtype=float), np.arange(101))] if len(present) else []
            )
        else:
            counts = present.astype(str).value_counts()
            counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
            entry["categories"] = {k: _share(v, len(values)) for k, v in counts.head(MAX_CATEGORIES).items()}
            entry["other_share"] = _share(counts.iloc[MAX_CATEGORIES:].sum(), len(values))
        columns[name] = entry
    return {"rows": len(frame), "columns": columns}


def _share(count: int, total: int) -> float:
    return round(float(count) / total, 6) if total else 0.0


@dataclass(frozen=True)
class Drift:
    """What changed from production's training data to the candidate's."""

    new_columns: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    kind_changes: list[KindChange] = field(default_factory=list)
    unseen_categories: dict[str, dict[str, float]] = field(default_factory=dict)  # column -> {value: share}
    psi: dict[str, float] = field(default_factory=dict)  # numeric column -> PSI
    missing_share: dict[str, MissingShares] = field(default_factory=dict)  # column -> {production, candidate}

    def to_dict(self) -> dict[str, Any]:
        """The changes as plain data for the report."""
        return asdict(self)

    def warnings(self, psi_warn: float = 0.1) -> list[str]:
        """The changes a reviewer should look at, as sentences."""
        out = [f"new column {c!r}" for c in self.new_columns]
        out += [f"column {c!r} is gone" for c in self.missing_columns]
        out += [f"column {k['column']!r} changed from {k['from']} to {k['to']}" for k in self.kind_changes]
        for column, values in self.unseen_categories.items():
            shown = ", ".join(f"{v!r} ({share:.1%})" for v, share in list(values.items())[:5])
            out.append(f"{column!r} has categories production never saw: {shown}")
        out += [f"{c!r} shifted: PSI {v:.3f}" for c, v in self.psi.items() if v >= psi_warn]
        for column, shares in self.missing_share.items():
            out.append(
                f"{column!r} missing in {shares['candidate']:.1%} of rows (production {shares['production']:.1%})"
            )
        return out


def compare_profiles(production: Profile, candidate: Profile, missing_change: float = 0.05) -> Drift:
    """What changed from production's training data to the candidate's."""
    before, after = production["columns"], candidate["columns"]
    drift = Drift(
        new_columns=[c for c in after if c not in before],
        missing_columns=[c for c in before if c not in after],
    )
    for column in (c for c in after if c in before):
        old, new = before[column], after[column]
        if old["kind"] != new["kind"]:
            drift.kind_changes.append({"column": column, "from": old["kind"], "to": new["kind"]})
            continue
        if abs(new["missing_share"] - old["missing_share"]) >= missing_change:
            drift.missing_share[column] = {"production": old["missing_share"], "candidate": new["missing_share"]}
        if new["kind"] == "numeric":
            if old["percentiles"] and new["percentiles"]:
                drift.psi[column] = round(percentile_psi(old["percentiles"], new["percentiles"]), 6)
        else:
            unseen = {v: s for v, s in new["categories"].items() if v not in old["categories"]}
            if unseen:
                drift.unseen_categories[column] = unseen
    return drift


def percentile_psi(expected_percentiles: list[float], actual_percentiles: list[float]) -> float:
    """Population stability index over the deciles of the expected (production) distribution, from percentiles."""
    expected = np.asarray(expected_percentiles, dtype=float)
    actual = np.asarray(actual_percentiles, dtype=float)
    edges = np.unique(expected[10:100:10])
    return psi(_bin_shares(expected, edges).tolist(), _bin_shares(actual, edges).tolist())


def _bin_shares(percentiles: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.float64]:
    """Share of the distribution in (-inf, e1], (e1, e2], ..., (ek, inf), read off its percentiles."""
    cdf = np.searchsorted(percentiles, edges, side="right") / len(percentiles)
    shares: NDArray[np.float64] = np.diff(np.r_[0.0, cdf, 1.0])  # numpy's stubs type np.r_[...] as Any
    return shares
