"""Prometheus metrics of the service.

One worker: a registry of its own per app. Several workers (`WEB_CONCURRENCY`):
prometheus_client's multiprocess mode, where every worker writes its samples to
files in `PROMETHEUS_MULTIPROC_DIR` and `/metrics` on any worker sums them all.
"""

from __future__ import annotations

import os
import time
from typing import TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.metrics import MetricWrapperBase
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KNOWN_PATHS = {"/health", "/ready", "/model", "/predict", "/invocations", "/metrics"}
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
VERSION_HEADER = "X-Model-Version"  # which version answered: on every answer a model gave, errors included
VERSION_HEADER_BYTES = VERSION_HEADER.lower().encode()
M = TypeVar("M", bound=MetricWrapperBase)


def multiprocess_mode() -> bool:
    """True when samples go to files shared by the workers (decided before any metric is made)."""
    return bool(os.environ.get(MULTIPROC_DIR))


# Buckets of predicted probabilities, and of the gap between two versions' probabilities on the same record.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DELTA_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
RELOAD_RESULTS = ("success", "failure", "refused", "unreachable")


class ServiceMetrics:
    """The service's metrics, and the registry /metrics reads them from.

    Every metric that concerns a model carries a `version` label (docs/DESIGN.md).
    """

    def __init__(self) -> None:
        shared = multiprocess_mode()
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
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
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
        self.canary_weight = Gauge(
            "api_canary_weight", "Share of requests (percent) the canary answers", registry=own,
            multiprocess_mode="livemax",
        )  # fmt: skip
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}

    def child(self, metric: M, *labels: str) -> M:
        """metric.labels(*labels), looked up once: `labels()` costs microseconds on every request."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return cast(M, found)  # the child of `metric`, which labels() makes of its own type


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

        async def send_and_capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = str(message["status"])
                for name, value in message.get("headers", ()):
                    if name == VERSION_HEADER_BYTES:  # which version answered, as every model answer says
                        answered["version"] = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, send_and_capture)
        finally:
            version = answered["version"]
            self.metrics.child(self.metrics.latency, endpoint, version).observe(time.perf_counter() - started)
            self.metrics.child(self.metrics.requests, endpoint, answered["status"], version).inc()
