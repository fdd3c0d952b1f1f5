"""What live release decisions count: one unit per request, of the version that answered it, bounded per client.

A rollout's canary steps and the bake compare versions on these counters
(api/metrics.py): `api_decision_requests_total`, the events among those
requests (`error`: a 5xx; `refused`: the canary refused a body production
accepted; `positive`: one random record of the request labelled positive)
and the seconds per record from the body read whole to the answer ready (a
client trickling its body in slowly is not the version's slowness). A request
counts when its body was read whole, production decoded its records (so its
side was decided), a model answered it, and its client is within its budget
(api/client_budget.py). A batch is one unit, whatever its size: no single
request weighs more than another.

Counting is a few dictionary bumps on the request path; `flush`, every second
and before each scrape, hands the counts to the Prometheus metrics.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence

from starlette.types import Scope

from api.client_budget import ClientBudget, client_key
from api.live_stats import add_to_histogram
from api.metrics import (
    DECISION_EVENTS,
    DECISION_LATENCY_BUCKETS,
    SHADOW_DECISION_EVENTS,
    ServiceMetrics,
)
from api.model.columns import Columns


def customers(columns: Columns, field: str | None) -> Sequence[object] | None:
    """Every record's customer id (None where a record has none), or None when records carry no customer field."""
    values = columns.get(field) if field else None
    return values if isinstance(values, list) else None  # decoders give a list of ids (a float array: no ids)


class _Pending:
    """One version's counts since the last flush."""

    __slots__ = ("events", "latency", "latency_sum", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.events = dict.fromkeys(DECISION_EVENTS, 0)
        self.latency = [0] * (len(DECISION_LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.latency_sum = 0.0


class Decisions:
    """The decision counters of one worker: per version, and per client within its budget."""

    def __init__(self, metrics: ServiceMetrics, budget: ClientBudget, proxy_hops: int = 0) -> None:
        self.metrics, self.budget, self.proxy_hops = metrics, budget, proxy_hops
        self._pending: dict[str, _Pending] = {}
        self._uncounted = {reason: 0 for reason in ("client_budget", "client_table_full")}
        self._lock = threading.Lock()

    def series(self, version: str) -> None:
        """Every decision series of a version at zero, from its first moment serving (so increase() sees the first)."""
        m = self.metrics
        m.child(m.decision_requests, version)
        m.child(m.decision_latency, version)
        for event in DECISION_EVENTS:
            m.child(m.decision_events, version, event)
        for event in SHADOW_DECISION_EVENTS:
            m.child(m.shadow_decision, version, event)

    def admit(self, scope: Scope | None) -> bool:
        """Whether this request's client may have one more request counted now (takes one unit of its budget).

        No scope (a caller outside HTTP): one anonymous client.
        """
        if scope is None:
            key = ""
        elif self.proxy_hops:
            key = client_key(scope.get("client"), scope.get("headers", ()), self.proxy_hops)
        else:  # the peer: most deployments, looked up inline
            peer = scope.get("client")
            key = str(peer[0]) if peer else ""
        why = self.budget.take(key)
        if why is None:
            return True
        with self._lock:
            self._uncounted[why] += 1
        return False

    def count(self, version: str, seconds: float, records: int, event: str | None = None) -> None:
        """One counted request answered by `version`: `seconds` from body read to answer ready, over `records`."""
        per_record = seconds / records if records > 1 else seconds
        with self._lock:
            pending = self._pending.get(version)
            if pending is None:
                pending = self._pending[version] = _Pending()
            pending.requests += 1
            pending.latency[bisect_left(DECISION_LATENCY_BUCKETS, per_record)] += 1
            pending.latency_sum += per_record
            if event is not None:
                pending.events[event] += 1

    def flush(self) -> None:
        """Hand everything counted to the metrics."""
        with self._lock:
            taken, self._pending = self._pending, {}
            uncounted = {reason: n for reason, n in self._uncounted.items() if n}
            self._uncounted = dict.fromkeys(self._uncounted, 0)
        m = self.metrics
        for reason, n in uncounted.items():
            m.child(m.decision_uncounted, reason).inc(n)
        for version, pending in taken.items():
            m.child(m.decision_requests, version).inc(pending.requests)
            for event, n in pending.events.items():
                if n:
                    m.child(m.decision_events, version, event).inc(n)
            add_to_histogram(m.child(m.decision_latency, version), pending.latency, pending.latency_sum)
