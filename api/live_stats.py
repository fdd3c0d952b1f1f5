"""What the served models see and answer, counted off the request path.

A request only appends its columns and answers to a list (well under a
microsecond); `flush`, run every second by the app and before every scrape,
bins the pending values (predicted probabilities, positives, each feature's
value in its version's training-profile bins) with numpy and hands the counts
to the Prometheus metrics. So live drift costs the request path almost nothing
and batches are binned as whole columns.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api.metrics import SCORE_BUCKETS, ServiceMetrics
from api.model.loaded_model import LoadedModel
from api.release.frames import Columns

# Past this many records waiting, the request that adds more flushes at once: memory stays bounded.
MAX_PENDING_RECORDS = 50_000


@dataclass
class _Pending:
    """Answers of one version since the last flush."""

    model: LoadedModel
    columns: list[Columns] = field(default_factory=list)
    labels: list[Sequence[Any]] = field(default_factory=list)
    probabilities: list[Sequence[float]] = field(default_factory=list)
    records: int = 0


class LiveStats:
    """Counts of served predictions, scores and feature values per version, flushed into the metrics."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()  # requests may be answered on worker threads (large batches)
        self._flushing = threading.Lock()  # one flush at a time: the bins' counts are shared
        self._profiled: set[str] = set()

    def record(
        self,
        model: LoadedModel,
        columns: Columns,
        labels: Sequence[Any],
        probabilities: Sequence[float] | None,
    ) -> None:
        """Note one answered request (probabilities None: /invocations, which answers labels only)."""
        with self._lock:
            pending = self._pending.get(model.version)
            if pending is None or pending.model is not model:
                pending = self._pending[model.version] = _Pending(model)
            pending.columns.append(columns)
            pending.labels.append(labels)
            if probabilities is not None:
                pending.probabilities.append(probabilities)
            pending.records += len(labels)
            full = sum(p.records for p in self._pending.values()) > MAX_PENDING_RECORDS
        if full:
            self.flush()

    def flush(self) -> None:
        """Bin everything pending and add it to the metrics."""
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, {}
            for version, batch in pending.items():
                self._profile(batch.model)
                self._flush(version, batch)

    def _flush(self, version: str, batch: _Pending) -> None:
        m = self.metrics
        labels = [label for part in batch.labels for label in part]
        m.child(m.predictions, version).inc(len(labels))
        positive = batch.model.positive_label
        m.child(m.positives, version).inc(sum(1 for label in labels if label == positive))
        if batch.probabilities:
            scores = np.concatenate([np.asarray(p, dtype=np.float64) for p in batch.probabilities])
            observe_histogram(m.child(m.scores, version), scores, SCORE_BUCKETS)
        for bins in batch.model.drift_bins:
            values: list[Any] = []
            for columns in batch.columns:
                column = columns.get(bins.name)
                if column is not None:
                    values.extend(column.tolist() if isinstance(column, np.ndarray) else column)
            bins.observe(values)
            for label, count in zip(bins.labels, bins.take(), strict=True):
                if count:
                    m.child(m.feature_values, version, bins.name, label).inc(count)

    def _profile(self, model: LoadedModel) -> None:
        """The training share of every bin, as gauges, once per loaded version."""
        if model.version in self._profiled:
            return
        self._profiled.add(model.version)
        m = self.metrics
        for bins in model.drift_bins:
            for label, share in zip(bins.labels, bins.expected, strict=True):
                m.child(m.feature_expected, model.version, bins.name, label).set(share)
            for label in bins.labels:  # every bin exists from the start: a window with none of it is a share of 0
                m.child(m.feature_values, model.version, bins.name, label)


def observe_histogram(histogram: Any, values: np.ndarray, bounds: Sequence[float]) -> None:
    """Add many observations to a prometheus_client histogram child at once.

    Its `observe` takes one value; this adds each bucket's count and the sum in
    one increment each (the child's own per-bucket values, in single-process and
    multiprocess mode alike).
    """
    values = values[np.isfinite(values)]
    index = np.searchsorted(np.asarray(bounds), values, side="left")  # bucket i: bounds[i-1] < v <= bounds[i]
    counts = np.bincount(index, minlength=len(bounds) + 1)
    for i, count in enumerate(counts.tolist()):
        if count:
            histogram._buckets[i].inc(count)
    histogram._sum.inc(float(values.sum()))
