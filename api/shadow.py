"""Shadow mode: production answers, and a sampled copy of the request is scored by the canary off the request path.

Copies wait in a bounded queue (dropped and counted when it is full) for one
worker thread, which decodes them with the canary's own schema, predicts, and
counts how often the canary agrees with production on the same records and
how far apart their probabilities are. Nothing here can fail or slow a
production answer beyond the cost of a queue put.
"""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from api.live_stats import LiveStats, observe_histogram
from api.metrics import DELTA_BUCKETS, SCORE_BUCKETS, ServiceMetrics
from api.model.loaded_model import LoadedModel, Prediction

log = logging.getLogger("api")


class Shadow:
    """A bounded queue of request copies and the thread that scores them with the canary."""

    def __init__(self, metrics: ServiceMetrics, stats: LiveStats, capacity: int) -> None:
        self.metrics, self.stats = metrics, stats
        self._queue: queue.Queue[tuple[LoadedModel, bytes, Prediction]] = queue.Queue(maxsize=capacity)
        self._worker: threading.Thread | None = None

    def offer(self, canary: LoadedModel, body: bytes, production: Prediction) -> None:
        """Queue a copy of a request production answered; drop it (counted) when the queue is full."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="shadow", daemon=True)
            self._worker.start()
        try:
            self._queue.put_nowait((canary, body, production))
        except queue.Full:
            self.metrics.child(self.metrics.shadow, canary.version, "dropped").inc()

    def _run(self) -> None:
        while True:
            canary, body, production = self._queue.get()
            try:
                self._score(canary, body, production)
            except Exception as exc:  # the canary's problem: counted, never production's
                self.metrics.child(self.metrics.shadow, canary.version, "failed").inc()
                log.debug("shadow scoring failed: %s", type(exc).__name__)

    def _score(self, canary: LoadedModel, body: bytes, production: Prediction) -> None:
        columns = canary.request_columns(body)
        result = canary.predict_columns(columns)
        self.stats.record(canary, columns, result.labels, result.probabilities)
        m, version = self.metrics, canary.version
        agree = sum(1 for a, b in zip(result.labels, production.labels, strict=True) if a == b)
        m.child(m.shadow_agreement, version, "true").inc(agree)
        m.child(m.shadow_agreement, version, "false").inc(len(result.labels) - agree)
        delta = np.abs(np.asarray(result.probabilities) - np.asarray(production.probabilities))
        observe_histogram(m.child(m.shadow_delta, version), delta, DELTA_BUCKETS)
        # Production's scores on these same records: the two distributions a rollout compares differ by model only.
        observe_histogram(
            m.child(m.shadow_production_score, version), np.asarray(production.probabilities), SCORE_BUCKETS
        )
        m.child(m.shadow, version, "scored").inc()
