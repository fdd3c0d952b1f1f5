"""Shadow mode: production answers, and a sampled copy of the request is scored by the canary off the request path.

Copies wait in a bounded queue (dropped and counted when it is full) for one
worker thread, which decodes them with the canary's own schema, predicts what
queued meanwhile in one call, and counts how often the canary agrees with
production on the same records and how far apart their probabilities are.
Nothing here can fail a production answer, but the thread shares the
process's CPU and interpreter lock: on a saturated worker, shadowing every
request raises production's p99 (benchmarks/shadow_cost.py measures it).
"""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from api.live_stats import LiveStats, observe_histogram
from api.metrics import DELTA_BUCKETS, SCORE_BUCKETS, ServiceMetrics
from api.model.loaded_model import LoadedModel, Prediction
from api.release.frames import Values

log = logging.getLogger("api")
BATCH = 256  # copies scored in one call at most


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
            waiting = [self._queue.get()]
            while len(waiting) < BATCH:  # what queued meanwhile is scored in one call: one-record calls cost most
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for canary in {id(c): c for c, _, _ in waiting}.values():
                copies = [(body, production) for c, body, production in waiting if c is canary]
                try:
                    self._score(canary, copies)
                except Exception as exc:  # the canary's problem: counted, never production's
                    self.metrics.child(self.metrics.shadow, canary.version, "failed").inc(len(copies))
                    log.debug("shadow scoring failed: %s", type(exc).__name__)

    def _score(self, canary: LoadedModel, copies: list[tuple[bytes, Prediction]]) -> None:
        m, version = self.metrics, canary.version
        decoded = []
        for body, production in copies:  # a copy the canary refuses is counted alone, not with its batch
            try:
                decoded.append((canary.request_columns(body), production))
            except Exception:
                m.child(m.shadow, version, "failed").inc()
        if not decoded:
            return
        requests = [columns for columns, _ in decoded]
        productions = [production for _, production in decoded]
        names = {name: None for r in requests for name in r}  # every request's features, in order
        sizes = [len(next(iter(r.values()), [])) for r in requests]
        columns = {name: _joined([r.get(name, [None] * n) for r, n in zip(requests, sizes, strict=True)])
                   for name in names}  # fmt: skip
        result = canary.predict_columns(columns)
        self.stats.record(canary, columns, result.labels, result.probabilities)
        labels = [label for production in productions for label in production.labels]
        probabilities = np.asarray([p for production in productions for p in production.probabilities])
        agree = sum(1 for a, b in zip(result.labels, labels, strict=True) if a == b)
        m.child(m.shadow_agreement, version, "true").inc(agree)
        m.child(m.shadow_agreement, version, "false").inc(len(result.labels) - agree)
        delta = np.abs(np.asarray(result.probabilities) - probabilities)
        observe_histogram(m.child(m.shadow_delta, version), delta, DELTA_BUCKETS)
        # Production's scores on these same records: the two distributions a rollout compares differ by model only.
        observe_histogram(m.child(m.shadow_production_score, version), probabilities, SCORE_BUCKETS)
        m.child(m.shadow, version, "scored").inc(len(decoded))


def _joined(parts: list[Values]) -> Values:
    """One feature's values across several requests, in order (float arrays stay arrays)."""
    if all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return [value for part in parts for value in part]
