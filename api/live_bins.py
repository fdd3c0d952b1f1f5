"""Served values into a version's drift bins: whole columns at C speed, at most SAMPLED_RECORDS records a request.

Binning every value of every feature of a 1,000-record batch value by value
cost about as much as decoding and predicting the batch (1.1 ms of 1.7 ms, 19
features; issue 31). Here a numeric column is binned with one np.searchsorted
and one np.bincount, a categorical one counted by collections.Counter (in C),
each of its few distinct values then looked up once. And a request of more
than SAMPLED_RECORDS records counts the values of SAMPLED_RECORDS of them,
drawn uniformly at random without replacement, unweighted: each request adds
min(records, SAMPLED_RECORDS) values to each feature's counters, so

- binning no longer grows with a request's records (a few microseconds a
  feature; a 1,000-record request's whole count fell ninefold, to ~0.1 ms);
- one huge batch weighs in the drift counters as much as SAMPLED_RECORDS
  one-record requests, not as its records: it cannot swamp the window's PSI;
- the counters count values actually looked at: the alerts' floor of 500
  values in the window (deploy/prometheus/rules.yml) keeps its meaning.

The PSI then estimates the served values' distribution with each request's
records weighted min(n, SAMPLED_RECORDS) / n: the records' own distribution
whenever a batch's values do not depend on its size (benchmarks/live_counting.py
and tests/unit/test_live_stats_sampling.py measure it against exact counting).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from api.model.columns import Values
from api.model.drift import FeatureBins

SAMPLED_RECORDS = 64  # a request's records whose values are binned (all of them up to this many)
NUMPY_FROM = 8  # numeric columns longer than this are binned with numpy, shorter ones value by value


class Picked:
    """The records of one request (or of several joined) whose values are counted: their positions."""

    __slots__ = ("_get", "index")

    def __init__(self, index: np.ndarray) -> None:
        self.index = index
        self._get = itemgetter(*index.tolist())

    def of(self, values: Values) -> Sequence[Any] | np.ndarray:
        """The picked records' values of one column."""
        if isinstance(values, np.ndarray):
            return values[self.index]
        found = self._get(values)
        return found if len(self.index) > 1 else (found,)  # itemgetter of one position gives the value itself


def pick(sizes: Sequence[int], limit: int, rng: np.random.Generator) -> Picked | None:
    """At most `limit` records of each request of `sizes` (joined in that order), uniformly; None: every record."""
    if all(size <= limit for size in sizes):
        return None
    parts, start = [], 0
    for size in sizes:
        if size <= limit:
            parts.append(np.arange(start, start + size))
        else:
            parts.append(start + rng.choice(size, limit, replace=False))
        start += size
    return Picked(parts[0] if len(parts) == 1 else np.concatenate(parts))


class ColumnBins:
    """One feature's counting plan into its FeatureBins' counts (the same list: FeatureBins.take empties it)."""

    __slots__ = ("categories", "counts", "edge_list", "edges", "missing", "name", "unseen")

    def __init__(self, bins: FeatureBins) -> None:
        self.name, self.counts = bins.name, bins.counts
        self.missing = len(bins.labels) - 1
        self.unseen = self.missing - 1  # categorical only
        self.edge_list = bins.edges
        # Searched with +inf appended: NaN (missing), sorting after +inf, lands one past it, in `missing`.
        self.edges = None if bins.edges is None else np.asarray([*bins.edges, np.inf], dtype=np.float64)
        self.categories = bins.categories

    def count(self, values: Sequence[Any] | np.ndarray) -> None:
        """Count every value (None or NaN: missing) in its bin."""
        if self.edges is None:
            self._categorical(values)
        elif len(values) > NUMPY_FROM:
            self._numeric(values)
        else:
            counts, edges, missing = self.counts, self.edge_list or [], self.missing
            for value in values:
                counts[missing if value is None or value != value else bisect_left(edges, value)] += 1

    def _numeric(self, values: Sequence[Any] | np.ndarray) -> None:
        numbers = np.asarray(values, dtype=np.float64)  # None: NaN
        assert self.edges is not None
        bins = np.searchsorted(self.edges, numbers, side="left")
        counts = self.counts
        for i, n in enumerate(np.bincount(bins, minlength=len(counts)).tolist()):
            if n:
                counts[i] += n

    def _categorical(self, values: Sequence[Any] | np.ndarray) -> None:
        counts, lookup, unseen, missing = self.counts, self.categories.get, self.unseen, self.missing
        for value, n in Counter(values.tolist() if isinstance(values, np.ndarray) else values).items():
            counts[missing if value is None or value != value else lookup(value, unseen)] += n
