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
M = TypeVar("M", bound=MetricWrapperBase)


def multiprocess_mode() -> bool:
    """True when samples go to files shared by the workers (decided before any metric is made)."""
    return bool(os.environ.get(MULTIPROC_DIR))


class ServiceMetrics:
    """The service's metrics, and the registry /metrics reads them from."""

    def __init__(self) -> None:
        shared = multiprocess_mode()
        # In multiprocess mode the metrics are registered nowhere: the collector reads every worker's files.
        self.registry = CollectorRegistry()
        own = None if shared else self.registry
        if shared:
            # prometheus_client leaves this constructor unannotated.
            multiprocess.MultiProcessCollector(self.registry)
        self.requests = Counter(
            "api_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=own
        )
        self.latency = Histogram(
            "api_request_latency_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=own,
        )
        self.predictions = Counter(
            "api_predictions_total", "Records predicted by model version", ["model_version"], registry=own
        )
        # One sample per live worker (label `pid`) when several serve: a worker behind on a swap shows.
        self.serving_version = Gauge(
            "api_serving_model_version",
            "The model version now serving (0: none)",
            registry=own,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter("api_model_reloads_total", "Model loads by result", ["result"], registry=own)
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
        status = {"code": 500}
        started = time.perf_counter()

        async def send_and_capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_capture)
        finally:
            self.metrics.child(self.metrics.latency, endpoint).observe(time.perf_counter() - started)
            self.metrics.child(self.metrics.requests, endpoint, str(status["code"])).inc()
