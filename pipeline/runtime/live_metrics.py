"""Live metrics for rollout and watch: from Prometheus (PROMETHEUS_URL), else straight from the replicas' /metrics.

Both give the same snapshot (gates/live_rules.py): the API's counters summed
over replicas and worker processes, the training shares of the drift bins
taken once. A source that cannot be read is an InfrastructureError (exit 3).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.release.redact import redact
from gates.live_rules import GAUGES, Snapshot, labels_of
from pipeline.core.errors import ConfigError, InfrastructureError

PROMETHEUS_VAR = "PROMETHEUS_URL"
# What a rollout and a bake read; everything else the API exports is left out of the snapshot.
READ = (
    "api_requests_total",
    "api_request_latency_seconds_bucket",
    "api_score_bucket",
    "api_shadow_agreement_total",
    "api_shadow_requests_total",
    "api_shadow_production_score_bucket",
    "api_feature_values_total",
    "api_feature_expected_ratio",
)
# Labels that tell replicas and processes apart: summed over.
PER_REPLICA = frozenset({"pid", "instance", "job", "pod", "environment"})


class MetricsSource(Protocol):
    """Where live metrics come from."""

    def snapshot(self) -> Snapshot:
        """The API's counters now, summed over replicas."""
        ...

    def describe(self) -> str:
        """What is read, for the report."""
        ...


class Replicas:
    """The replicas' own /metrics, read one after the other."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = [url.rstrip("/") for url in urls]

    def describe(self) -> str:
        """The replicas read."""
        return "the /metrics of " + ", ".join(redact(url) for url in self.urls)

    def snapshot(self) -> Snapshot:
        """Every replica's samples of the metrics read, summed."""
        out: Snapshot = {}
        for url in self.urls:
            try:
                answer = httpx.get(url + "/metrics", timeout=10)
                answer.raise_for_status()
            except httpx.HTTPError as exc:
                raise InfrastructureError(f"cannot read the metrics of {redact(url)}: {redact(exc)}") from None
            for family in text_string_to_metric_families(answer.text):
                for sample in family.samples:
                    if sample.name in READ:
                        _add(out, sample.name, sample.labels, sample.value)
        return out


class Prometheus:
    """A Prometheus server that scrapes the replicas (the same metrics, summed by PromQL)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def describe(self) -> str:
        """The server read."""
        return f"Prometheus at {redact(self.url)}"

    def snapshot(self) -> Snapshot:
        """One instant query per metric read, summed over what tells replicas apart."""
        out: Snapshot = {}
        for name in READ:
            how = "max" if name in GAUGES else "sum"
            query = f"{how} without ({', '.join(sorted(PER_REPLICA))}) ({name})"
            try:
                answer = httpx.get(self.url + "/api/v1/query", params={"query": query}, timeout=10)
                answer.raise_for_status()
                result = answer.json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                raise InfrastructureError(f"cannot query {redact(self.url)}: {redact(exc)}") from None
            for series in result:
                _add(out, name, series["metric"], float(series["value"][1]))
        return out


def _add(snapshot: Snapshot, name: str, labels: Mapping[str, str], value: float) -> None:
    key = (name, labels_of({k: v for k, v in labels.items() if k not in PER_REPLICA and k != "__name__"}))
    if name in GAUGES:
        snapshot[key] = max(snapshot.get(key, value), value)
    else:
        snapshot[key] = snapshot.get(key, 0.0) + value


def metrics_source(api_urls: Sequence[str], env: Mapping[str, str] | None = None) -> MetricsSource:
    """Prometheus when PROMETHEUS_URL is set, else the replicas given with --api-url; ConfigError without either."""
    env = os.environ if env is None else env
    if env.get(PROMETHEUS_VAR):
        return Prometheus(env[PROMETHEUS_VAR])
    if api_urls:
        return Replicas(api_urls)
    raise ConfigError(f"no live metrics to judge: set {PROMETHEUS_VAR}, or give the replicas with --api-url")
