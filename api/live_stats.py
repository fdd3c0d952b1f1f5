"""What the served models see and answer, counted without keeping anything of a request.

Each answered request bumps a few counters of its version in place: how many
records were predicted and how many positive, which bucket each probability
falls in, and which training-profile bin (api/model/drift.py) each feature
value of at most SAMPLED_RECORDS of its records falls in, drawn at random in
a larger batch (api/live_bins.py: what that keeps of the drift alerts'
sensitivity, and why one batch may not weigh as its records). Nothing of the
request outlives it (keeping requests for a later flush filled the garbage
collector's old generations: full passes paused the service for hundreds of
milliseconds). `flush`, every second and
before each scrape, hands the counts to the Prometheus metrics.

A version no longer serving is let go at the first flush that finds nothing
new of it (so a request still in flight on it when it was swapped out is
counted): its counts, and with them its loaded model, are released. Its
metric series stay exported until RETIRED_SERIES_KEPT later versions have
retired too; then they are removed (in one process; with several workers
the shared files keep them until the workers restart).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from api.live_bins import SAMPLED_RECORDS, ColumnBins, pick
from api.metrics import SCORE_BUCKETS, ServiceMetrics
from api.model.columns import Columns
from api.model.loaded_model import LoadedModel

VECTOR_FROM = 64  # answers longer than this are bucketed with numpy, shorter ones value by value
RETIRED_SERIES_KEPT = 2  # versions let go whose metric series are still exported (a rollback's previous one)


class VersionCounts:
    """The counts of one loaded version since the last flush; bumped under a lock (answers come from threads too)."""

    def __init__(
        self, model: LoadedModel, sample: int = SAMPLED_RECORDS, rng: np.random.Generator | None = None
    ) -> None:
        if sample < 2:
            raise ValueError(f"sample: a request's records whose values are binned must be at least 2, not {sample}")
        self.model = model
        self.sample = sample
        self.rng = rng if rng is not None else np.random.default_rng()  # fresh entropy: a forked scorer's own
        self.lock = threading.Lock()
        self.predictions = 0
        self.positives = 0
        self.scores = [0] * (len(SCORE_BUCKETS) + 1)  # the last: above every bound
        self.score_sum = 0.0
        # One record is most answers: binned inline from these plans, no call per feature (a few microseconds in all).
        self._numeric = [
            (b.name, b.edges, b.counts, len(b.labels) - 1) for b in model.drift_bins if b.edges is not None
        ]
        # A category's bin in one lookup, None (JSON null: missing) included; a request's text is never NaN.
        self._categorical = [
            (b.name, {**b.categories, None: len(b.labels) - 1}.get, b.counts, len(b.labels) - 2)
            for b in model.drift_bins
            if b.edges is None
        ]
        self._columns = [ColumnBins(b) for b in model.drift_bins]  # more than one record: whole columns at once

    def add(
        self,
        columns: Columns,
        labels: Sequence[Any],
        probabilities: Sequence[float] | None,
        sizes: Sequence[int] | None = None,
    ) -> None:
        """Count answered records: how many, positives, probabilities, and their feature values' bins.

        `sizes`: the requests these records are, in order (one request: `[len(labels)]`); of each, at most
        `sample` records drawn at random have their values binned. None: every record's values are.
        """
        positive = self.model.positive_label
        with self.lock:
            self.predictions += len(labels)
            if isinstance(labels, list):
                self.positives += labels.count(positive)
            else:
                self.positives += sum(1 for label in labels if label == positive)
            if probabilities is not None:
                self._scores(probabilities)
            if len(labels) == 1:
                self._one(columns)
                return
            picked = None if sizes is None else pick(sizes, self.sample, self.rng)
            for bins in self._columns:
                values = columns.get(bins.name)
                if values is not None:
                    bins.count(values if picked is None else picked.of(values))

    def _one(self, columns: Columns) -> None:
        get = columns.get
        for name, edges, counts, missing in self._numeric:
            column = get(name)
            if column is not None:
                value = column[0]
                counts[missing if value is None or value != value else bisect_left(edges, value)] += 1
        for name, lookup, counts, unseen in self._categorical:
            column = get(name)
            if column is not None:
                counts[lookup(column[0], unseen)] += 1

    def _scores(self, probabilities: Sequence[float]) -> None:
        if len(probabilities) > VECTOR_FROM:
            values = np.asarray(probabilities, dtype=np.float64)
            index = np.searchsorted(np.asarray(SCORE_BUCKETS), values, side="left")
            for i, count in enumerate(np.bincount(index, minlength=len(self.scores)).tolist()):
                self.scores[i] += count
            self.score_sum += float(values.sum())
            return
        for value in probabilities:
            self.scores[bisect_left(SCORE_BUCKETS, value)] += 1
            self.score_sum += value

    def merge(self, counted: Mapping[str, Any]) -> None:
        """Add counts made elsewhere, as Tally.take gives them (the shadow scorer's, api/shadow_tally.py)."""
        with self.lock:
            self.predictions += counted["predictions"]
            self.positives += counted["positives"]
            for i, count in enumerate(counted["scores"][: len(self.scores)]):
                self.scores[i] += count
            self.score_sum += counted["score_sum"]
            for bins in self.model.drift_bins:
                taken = counted["bins"].get(bins.name)
                if taken is not None and len(taken) == len(bins.counts):
                    for i, count in enumerate(taken):
                        bins.counts[i] += count

    def take(self) -> tuple[int, int, list[int], float, list[tuple[str, list[str], list[int]]]]:
        """Everything counted since the last take, and start again from zero."""
        with self.lock:
            taken = (self.predictions, self.positives, self.scores, self.score_sum)
            bins = [(b.name, b.labels, b.take()) for b in self.model.drift_bins]
            self.predictions = self.positives = 0
            self.scores, self.score_sum = [0] * len(self.scores), 0.0
        return (*taken, bins)


class LiveStats:
    """Counts of served predictions, scores and feature values per version, flushed into the metrics."""

    def __init__(self, metrics: ServiceMetrics, sample: int = SAMPLED_RECORDS, seed: int | None = None) -> None:
        self.metrics = metrics
        self.sample, self.seed = sample, seed  # each version's draws: from `seed` when given (tests), else fresh
        self._versions: dict[str, VersionCounts] = {}
        self._retired: deque[str] = deque()  # versions let go, oldest first, whose series are still exported
        self._lock = threading.Lock()

    def counts(self, model: LoadedModel) -> VersionCounts:
        """The counts of this loaded version (created, with its series at zero, the first time it is seen)."""
        found = self._versions.get(model.version)
        if found is not None and found.model is model:
            return found
        with self._lock:
            found = self._versions.get(model.version)
            if found is None or found.model is not model:
                if found is not None:
                    self._flush(found)
                rng = np.random.default_rng(self.seed)
                found = self._versions[model.version] = VersionCounts(model, self.sample, rng)
                self._series(model)
        return found

    def record(
        self, model: LoadedModel, columns: Columns, labels: Sequence[Any], probabilities: Sequence[float] | None
    ) -> None:
        """Count one answered request (probabilities None: /invocations, which answers labels only).

        Its predictions, positives and scores all; its feature values of at most `sample` records (api/live_bins.py).
        """
        self.counts(model).add(columns, labels, probabilities, (len(labels),))

    def merge(self, model: LoadedModel, counted: Mapping[str, Any]) -> None:
        """Add counts of `model`'s answers made in another process (VersionCounts.merge)."""
        self.counts(model).merge(counted)

    def flush(self, serving: Collection[LoadedModel | None] | None = None) -> None:
        """Hand everything counted to the metrics; with `serving` given, let go of idle versions not in it."""
        with self._lock:
            versions = list(self._versions.values())
        for counts in versions:
            counted = self._flush(counts)
            if serving is not None and not counted and not any(counts.model is model for model in serving):
                self._let_go(counts, serving)

    @property
    def versions(self) -> list[str]:
        """The versions counted now (serving, or retired since less than a flush)."""
        return list(self._versions)

    def _let_go(self, counts: VersionCounts, serving: Collection[LoadedModel | None]) -> None:
        version = counts.model.version
        with self._lock:
            if self._versions.get(version) is not counts:
                return
            del self._versions[version]
            if version not in self._retired:
                self._retired.append(version)
            live = {model.version for model in serving if model is not None} | set(self._versions)
            forget = []
            while len(self._retired) > RETIRED_SERIES_KEPT:
                oldest = self._retired.popleft()
                if oldest not in live:
                    forget.append(oldest)
        for old in forget:
            self.metrics.forget(old)

    def _flush(self, counts: VersionCounts) -> bool:
        """Hand one version's counts to the metrics; whether there were any."""
        m, version = self.metrics, counts.model.version
        predictions, positives, scores, score_sum, bins = counts.take()
        if predictions:
            m.child(m.predictions, version).inc(predictions)
            m.child(m.positives, version).inc(positives)
        if any(scores):
            add_to_histogram(m.child(m.scores, version), scores, score_sum)
        for feature, labels, taken in bins:
            for label, count in zip(labels, taken, strict=True):
                if count:
                    m.child(m.feature_values, version, feature, label).inc(count)
        return bool(predictions or any(scores))

    def _series(self, model: LoadedModel) -> None:
        """Every series of a version from its first answer on, at zero, and the training share of each bin.

        A series that appears with its first increment is missed by rate() and
        increase() for that first sample: they exist from the start instead.
        """
        m, version = self.metrics, model.version
        m.child(m.predictions, version)
        m.child(m.positives, version)
        m.child(m.scores, version)
        for bins in model.drift_bins:
            for label, share in zip(bins.labels, bins.expected, strict=True):
                m.child(m.feature_expected, version, bins.name, label).set(share)
                m.child(m.feature_values, version, bins.name, label)


def observe_histogram(histogram: Any, values: np.ndarray, bounds: Sequence[float]) -> None:
    """Add many observations to a prometheus_client histogram child at once."""
    values = values[np.isfinite(values)]
    index = np.searchsorted(np.asarray(bounds), values, side="left")  # bucket i: bounds[i-1] < v <= bounds[i]
    add_to_histogram(histogram, np.bincount(index, minlength=len(bounds) + 1).tolist(), float(values.sum()))


def add_to_histogram(histogram: Any, counts: Sequence[int], total: float) -> None:
    """Add per-bucket counts (not cumulative, the last above every bound) and their sum to a histogram child.

    prometheus_client's `observe` takes one value at a time: this adds each
    bucket's count in one increment, to the child's own per-bucket values (in
    single-process and multiprocess mode alike).
    """
    for i, count in enumerate(counts):
        if count:
            histogram._buckets[i].inc(count)
    histogram._sum.inc(total)
