"""Live input drift: each served value counted in the bins of the version's training profile.

The profile (data/profile.json, gates/profile.py) gives numeric columns their
percentiles and categorical ones their categories with shares. Numeric values
fall into the bins between the training deciles (`q0`..`qN`), categorical ones
into their category or `__unseen__`, missing ones into `__missing__`. Counts
accumulate in plain lists on the request path (api/live_stats.py) and are
handed to Prometheus counters off it; the training share of every bin is a
gauge, so recording rules compute each feature's PSI over any window
(deploy/prometheus/rules.yml).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MISSING, UNSEEN = "__missing__", "__unseen__"
DECILES = tuple(range(10, 100, 10))
VECTOR_FROM = 64  # columns longer than this are binned with numpy, shorter ones value by value


@dataclass
class FeatureBins:
    """One feature's bins: their labels and training shares, and the counts served since the last flush."""

    name: str
    labels: list[str]
    expected: list[float]
    edges: list[float] | None = None  # numeric: the inner edges (bin i holds edges[i-1] < x <= edges[i])
    categories: dict[Any, int] = field(default_factory=dict)  # categorical: category -> bin
    counts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.labels)

    def observe(self, values: Sequence[Any] | np.ndarray) -> None:
        """Count a column of served values (None or NaN: missing); a few hundred nanoseconds a value."""
        if len(values) > VECTOR_FROM:
            self._observe_many(values)
            return
        counts, missing = self.counts, len(self.labels) - 1
        if self.edges is not None:
            edges = self.edges
            for value in values:
                counts[missing if value is None or value != value else bisect_left(edges, value)] += 1
            return
        unseen, lookup = missing - 1, self.categories.get
        for value in values:
            counts[missing if value is None or value != value else lookup(value, unseen)] += 1

    def _observe_many(self, values: Sequence[Any] | np.ndarray) -> None:
        missing = len(self.labels) - 1
        if self.edges is not None:
            numbers = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
            bins = np.searchsorted(np.asarray(self.edges), numbers, side="left")
            bins[np.isnan(numbers)] = missing
        else:
            unseen, lookup = missing - 1, self.categories.get
            bins = np.fromiter(
                (missing if v is None or v != v else lookup(v, unseen) for v in values), np.int64, len(values)
            )
        for i, n in enumerate(np.bincount(bins, minlength=len(self.labels)).tolist()):
            self.counts[i] += n

    def take(self) -> list[int]:
        """The counts since the last take, and start again from zero (the same list: callers may hold it)."""
        taken = list(self.counts)
        self.counts[:] = [0] * len(self.counts)
        return taken


def numeric_bins(name: str, column: Mapping[str, Any]) -> FeatureBins | None:
    """Bins between the training deciles, with each bin's training share read off the percentiles."""
    percentiles = np.asarray(column.get("percentiles") or [], dtype=np.float64)
    if len(percentiles) != 101:
        return None
    edges = np.unique(percentiles[list(DECILES)])
    present = 1.0 - float(column.get("missing_share", 0.0))
    shares = np.bincount(np.searchsorted(edges, percentiles, side="left"), minlength=len(edges) + 1) / 101
    labels = [f"q{i}" for i in range(len(edges) + 1)]
    expected = [float(s) * present for s in shares]
    return FeatureBins(name, [*labels, MISSING], [*expected, 1.0 - present], edges=edges.tolist())


def categorical_bins(name: str, column: Mapping[str, Any]) -> FeatureBins:
    """A bin per training category, one for values training never saw (or kept), one for missing values."""
    categories = dict(column.get("categories") or {})
    labels = [*categories, UNSEEN, MISSING]
    other, missing = float(column.get("other_share", 0.0)), float(column.get("missing_share", 0.0))
    expected = [*map(float, categories.values()), other, missing]
    return FeatureBins(name, labels, expected, categories={c: i for i, c in enumerate(categories)})


def drift_bins(profile: Mapping[str, Any] | None, features: Sequence[str]) -> list[FeatureBins]:
    """The bins of every served feature the profile describes (none without a profile)."""
    if not profile:
        return []
    found = []
    for name in features:
        column = (profile.get("columns") or {}).get(name)
        if not column:
            continue
        bins = numeric_bins(name, column) if column.get("kind") == "numeric" else categorical_bins(name, column)
        if bins is not None:
            found.append(bins)
    return found
