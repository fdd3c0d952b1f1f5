"""Prometheus metrics of the service.

One worker: a registry of its own per app. Several workers (`WEB_CONCURRENCY`),
or METRICS_PORT set: prometheus_client's multiprocess mode, where every worker
writes its samples to files in `PROMETHEUS_MULTIPROC_DIR`; `/metrics` on any
worker (or the METRICS_PORT listener, api/__main__.py) sums them all.

A request the client left before any answer is counted with status "499" (as
nginx does), not as a 5xx; one the HTTP layer answered itself (a body timeout's
408, the body budget's 503, api/http_protocol.py) with that status.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.metrics import MetricWrapperBase
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http_protocol import ANSWERED_BY_PROTOCOL

KNOWN_PATHS = {"/health", "/ready", "/model", "/predict", "/invocations", "/outcomes", "/metrics"}
DISCONNECTED = "499"  # the status label of a request whose client left before any answer
VERSION_HEADER = "X-Model-Version"  # which version answered: on every answer a model gave, errors included
VERSION_HEADER_BYTES = VERSION_HEADER.lower().encode()
M = TypeVar("M", bound=MetricWrapperBase)


REQUEST_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Buckets of predicted probabilities, and of the gap between two versions' probabilities on the same record.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DELTA_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
RELOAD_RESULTS = ("success", "failure", "refused", "unreachable")
# The decision counters, what live release decisions (rollout, bake) read: counted once per request (api/decisions.py).
DECISION_EVENTS = ("error", "refused", "positive")
DECISION_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
UNCOUNTED_REASONS = ("client_budget", "client_table_full")
SHADOW_DECISION_EVENTS = ("counted", "disagreed", "moved", "refused")
# The feature lookup of records sent by customer id (api/model/online_store.py).
STORE_UNAVAILABLE_REASONS = ("timeout", "unreachable", "error", "busy", "not_configured")
LOOKUP_OUTCOMES = (
    "served", "stale_served", "invalid_id", "unknown_customer", "missing_features", "unreadable_features",
    "stale_features",
)  # fmt: skip
LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
MOVED_DELTA = 0.1  # a shadow copy's record "moved" when the two versions' probabilities differ by more than this


class ServiceMetrics:
    """The service's metrics, and the registry /metrics reads them from.

    Every metric that concerns a model carries a `version` label (docs/DESIGN.md).
    """

    def __init__(self, shared: bool = False) -> None:
        """`shared`: samples go to files the workers share (Settings.shared_metrics), decided before any is made."""
        # In multiprocess mode the metrics are registered nowhere: the collector reads every worker's files.
        self.registry = CollectorRegistry()
        own = None if shared else self.registry
        if shared:
            multiprocess.MultiProcessCollector(self.registry)
        self.requests = Counter(
            "api_requests_total",
            "HTTP requests by endpoint, status and the model version that answered (empty: none)",
            ["endpoint", "status", "version"],
            registry=own,
        )
        self.latency = Histogram(
            "api_request_latency_seconds",
            "HTTP request latency by endpoint and model version",
            ["endpoint", "version"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=own,
        )
        self.predictions = Counter("api_predictions_total", "Records predicted", ["version"], registry=own)
        self.positives = Counter(
            "api_positive_predictions_total", "Records predicted as the positive label", ["version"], registry=own
        )
        self.scores = Histogram(
            "api_score", "Predicted probabilities of the positive label", ["version"], buckets=SCORE_BUCKETS,
            registry=own,
        )  # fmt: skip
        # One sample per live worker (label `pid`) when several serve: a worker behind on a swap shows.
        self.serving_version = Gauge(
            "api_serving_model_version",
            "The production version this process serves (0: none)",
            registry=own,
            multiprocess_mode="liveall",
        )
        self.loaded = Gauge(
            "api_model_loaded",
            "1 for each version this process has loaded, by role (production, canary)",
            ["version", "role"],
            registry=own,
            multiprocess_mode="liveall",
        )
        self.ready = Gauge("api_ready", "1 while a model answers", registry=own, multiprocess_mode="liveall")
        self.registry_up = Gauge(
            "api_registry_up", "1 when the last registry poll succeeded", registry=own, multiprocess_mode="liveall"
        )
        self.reloads = Counter("api_model_reloads_total", "Model loads by result", ["result"], registry=own)
        for result in RELOAD_RESULTS:  # every result exists from the start, so rates over them are defined
            self.reloads.labels(result)
        self.feature_values = Counter(
            "api_feature_values_total",
            "Served feature values, by the bin of the version's training profile they fall in",
            ["version", "feature", "bin"],
            registry=own,
        )
        self.feature_expected = Gauge(
            "api_feature_expected_ratio",
            "Each bin's share of the version's training data",
            ["version", "feature", "bin"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.shadow = Counter(
            "api_shadow_requests_total",
            "Requests copied to the shadow version, by outcome (scored, dropped, failed)",
            ["version", "outcome"],
            registry=own,
        )
        self.shadow_agreement = Counter(
            "api_shadow_agreement_total",
            "Shadowed records, by whether the shadow version's label agreed with production's",
            ["version", "agree"],
            registry=own,
        )
        self.shadow_delta = Histogram(
            "api_shadow_score_delta",
            "Absolute difference of the shadow version's and production's probability on the same record",
            ["version"],
            buckets=DELTA_BUCKETS,
            registry=own,
        )
        self.shadow_production_score = Histogram(
            "api_shadow_production_score",
            "Production's probability on the records copied to the shadow version (label: the shadow version)",
            ["version"],
            buckets=SCORE_BUCKETS,
            registry=own,
        )
        self.decision_requests = Counter(
            "api_decision_requests_total",
            "Requests counted for release decisions (one per request, whatever its records), by the version answering",
            ["version"],
            registry=own,
        )
        self.decision_events = Counter(
            "api_decision_events_total",
            "Counted requests by outcome: error (5xx), refused (the canary refused what production accepted), "
            "positive (one random record of the request labelled positive)",
            ["version", "event"],
            registry=own,
        )
        self.decision_latency = Histogram(
            "api_decision_latency_seconds",
            "Seconds per record of a counted request, from its body read whole to its answer ready",
            ["version"],
            buckets=DECISION_LATENCY_BUCKETS,
            registry=own,
        )
        self.decision_uncounted = Counter(
            "api_decision_uncounted_total",
            "Requests answered but not counted for release decisions: their client was over its budget, or the "
            "table of clients was full",
            ["reason"],
            registry=own,
        )
        for reason in UNCOUNTED_REASONS:
            self.decision_uncounted.labels(reason)
        self.shadow_decision = Counter(
            "api_shadow_decision_total",
            "Shadow copies of counted requests, one random record each: counted, disagreed (labels differ), "
            "moved (probabilities differ by more than 0.1), refused (the shadow version refused or failed the copy)",
            ["version", "event"],
            registry=own,
        )
        self.canary_weight = Gauge(
            "api_canary_weight", "Share of requests (percent) the canary answers", registry=own,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.body_bytes_in_flight = Gauge(
            "api_body_bytes_in_flight",
            "Request body bytes reserved now (MAX_BODY_BYTES_IN_FLIGHT bounds it per worker)",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.body_budget_refused = Counter(
            "api_body_budget_refused_total",
            "Requests answered 503 because their body would not fit in MAX_BODY_BYTES_IN_FLIGHT",
            registry=own,
        )
        self.store_unavailable = Counter(
            "api_feature_store_unavailable_total",
            "Requests answered 503 because the online store failed or was slower than FEATURE_LOOKUP_TIMEOUT_MS, "
            "by reason (timeout, unreachable, error, busy: every connection in use, not_configured)",
            ["reason"],
            registry=own,
        )
        for reason in STORE_UNAVAILABLE_REASONS:
            self.store_unavailable.labels(reason)
        self.lookup_records = Counter(
            "api_feature_lookup_records_total",
            "Records sent by customer id, by outcome: served, stale_served (with a warning), or refused (invalid_id, "
            "unknown_customer, missing_features, unreadable_features, stale_features)",
            ["outcome"],
            registry=own,
        )
        for outcome in LOOKUP_OUTCOMES:
            self.lookup_records.labels(outcome)
        self.lookup_latency = Histogram(
            "api_feature_lookup_seconds",
            "Seconds to read a request's records from the online store (reads that answered)",
            buckets=LOOKUP_BUCKETS,
            registry=own,
        )
        # The prediction log (api/prediction_log.py): rows written, rows dropped (over PREDICTION_LOG_MAX_ROWS
        # waiting), flushes that failed (their rows wait for the next one).
        self.log_written = Counter(
            "prediction_log_written_total", "Answered records written to the prediction log", registry=own
        )
        self.log_dropped = Counter(
            "prediction_log_dropped_total",
            "Answered records left out of the prediction log: PREDICTION_LOG_MAX_ROWS rows were already waiting",
            registry=own,
        )
        self.log_flush_failures = Counter(
            "prediction_log_flush_failures_total",
            "Prediction log flushes that failed (their rows are kept, up to the bound, for the next flush)",
            registry=own,
        )
        # Live quality from the version's signed `quality` verdict (`python -m pipeline quality`), read from the
        # registry at each poll: the same on every replica (deploy/prometheus/rules.yml, churn-api.quality).
        self.live_f1 = Gauge(
            "model_live_f1",
            "F1 on delayed outcomes, from the version's quality verdict: the estimate and its interval (low, high)",
            ["version", "bound"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.gate_f1 = Gauge(
            "model_gate_f1", "The version's F1 at its gate, beside its live F1", ["version"], registry=own,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self.live_labelled = Gauge(
            "model_live_labelled", "Labelled predictions behind the version's live figures", ["version"],
            registry=own, multiprocess_mode="livemax",
        )  # fmt: skip
        self.quality_failed = Gauge(
            "model_quality_failed", "1 when the version's quality verdict is failed (verified with a verify key)",
            ["version"], registry=own, multiprocess_mode="livemax",
        )  # fmt: skip
        self._budget_refused_seen = 0
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}

    def body_budget(self, in_flight: int, refused: int) -> None:
        """What the worker's body budget holds now, and how many requests it refused since the start."""
        self.body_bytes_in_flight.set(in_flight)
        if refused > self._budget_refused_seen:
            self.body_budget_refused.inc(refused - self._budget_refused_seen)
            self._budget_refused_seen = refused

    def live_quality(self, version: str, verdict: str, figures: Mapping[str, Any]) -> None:
        """A version's quality verdict as gauges: failed or not, and live F1 against its gate (from its figures)."""
        self.quality_failed.labels(version).set(1 if verdict == "failed" else 0)
        f1 = figures.get("metrics", {}).get("f1") if isinstance(figures.get("metrics"), dict) else None
        labelled = figures.get("labelled")
        if isinstance(labelled, int | float):
            self.live_labelled.labels(version).set(labelled)
        if not isinstance(f1, dict):
            return
        interval = f1.get("interval")
        bounds = {"estimate": f1.get("live")}
        if isinstance(interval, list) and len(interval) == 2:
            bounds |= {"low": interval[0], "high": interval[1]}
        for bound, value in bounds.items():
            if isinstance(value, int | float):
                self.live_f1.labels(version, bound).set(value)
        if isinstance(f1.get("gate"), int | float):
            self.gate_f1.labels(version).set(f1["gate"])

    def forget_quality(self, version: str) -> None:
        """Remove `version`'s live quality gauges (its verdict is gone or no longer verifies): no stale figures."""
        for metric in (self.quality_failed, self.live_f1, self.gate_f1, self.live_labelled):
            _remove(metric, version)

    def forget(self, version: str) -> None:
        """Remove every series of `version` (a version long retired): its memory and its lines in /metrics."""
        for metric in vars(self).values():
            if isinstance(metric, MetricWrapperBase) and "version" in metric._labelnames:
                _remove(metric, version)
        self._children = {
            key: child
            for key, child in self._children.items()
            if not ("version" in key[0]._labelnames and key[1][key[0]._labelnames.index("version")] == version)
        }

    def child(self, metric: M, *labels: str) -> M:
        """metric.labels(*labels), looked up once: `labels()` costs microseconds on every request."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return cast(M, found)  # the child of `metric`, which labels() makes of its own type


def _remove(metric: MetricWrapperBase, version: str) -> None:
    """Remove the series of `metric` (labelled by version) whose version is `version`."""
    at = metric._labelnames.index("version")
    with metric._lock:
        keys = [key for key in metric._metrics if key[at] == version]
    for key in keys:
        metric.remove(*key)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, timing it and counting it by endpoint and status."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        answered = {"status": "500", "version": ""}
        started = time.perf_counter()
        left = False  # the client went away before the app answered

        async def receive_and_watch() -> Message:
            nonlocal left
            message = await receive()
            if message["type"] == "http.disconnect" and "started" not in answered:
                left = True
            return message

        async def send_and_capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["started"] = "yes"
                answered["status"] = str(message["status"])
                for name, value in message.get("headers", ()):
                    if name == VERSION_HEADER_BYTES:  # which version answered, as every model answer says
                        answered["version"] = value.decode()
            await send(message)

        try:
            await self.app(scope, receive_and_watch, send_and_capture)
        except ClientDisconnect:  # Starlette's Request.body() when the client left: not the app's error
            if not left:
                raise
        finally:
            if left:
                answered["status"] = str(scope.get(ANSWERED_BY_PROTOCOL, DISCONNECTED))
            version = answered["version"]
            self.metrics.child(self.metrics.latency, endpoint, version).observe(time.perf_counter() - started)
            self.metrics.child(self.metrics.requests, endpoint, answered["status"], version).inc()
