"""Live metrics for rollout and watch: from Prometheus (PROMETHEUS_URL), else straight from the replicas' /metrics.

Both give the same snapshot (gates/live_rules.py): the API's counters summed
over replicas and worker processes, the training shares of the drift bins
taken once. A source that cannot be read is an InfrastructureError (exit 3).

One Prometheus often scrapes several environments (staging and production
number their versions in different registries: version 7 in one is not
version 7 in the other), so every query it answers selects one environment
label: PROMETHEUS_ENVIRONMENT's value, else the only one Prometheus scrapes.
When it scrapes several and none is named, nothing is judged (ConfigError,
exit 2): a sum over environments would judge a mix of unrelated versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.release.redact import redact
from gates.live_rules import GAUGES, Snapshot, labels_of
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import ConfigError, InfrastructureError

PROMETHEUS_VAR = "PROMETHEUS_URL"
ENVIRONMENT_VAR = "PROMETHEUS_ENVIRONMENT"
# What a rollout and a bake read; everything else the API exports is left out of the snapshot.
READ = (
    "api_decision_requests_total",
    "api_decision_events_total",
    "api_decision_latency_seconds_bucket",
    "api_shadow_decision_total",
    "api_requests_total",
    "api_request_latency_seconds_bucket",
    "api_score_bucket",
    "api_shadow_agreement_total",
    "api_shadow_requests_total",
    "api_shadow_production_score_bucket",
    "api_feature_values_total",
    "api_feature_expected_ratio",
)
# Labels that tell replicas and processes apart: summed over. (A Prometheus query selects one
# environment first; the replicas' own /metrics carry no environment label.)
PER_REPLICA = frozenset({"pid", "instance", "job", "pod", "environment"})
# Which environments a Prometheus scrapes: a series without the label is environment "".
ENVIRONMENTS_QUERY = "count by (environment) (api_requests_total)"


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
    """A Prometheus server that scrapes the replicas (the same metrics, summed by PromQL), in one environment.

    `environment` is the value of the scraped series' environment label; None
    asks Prometheus which environments it scrapes (before the first query that
    needs one) and takes the only one, or refuses when there are several.
    """

    def __init__(self, url: str, environment: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.environment = environment

    def describe(self) -> str:
        """The server read and the environment selected (found first when not given)."""
        return f"Prometheus at {redact(self.url)}, environment {self.selected()!r}"

    def selected(self) -> str:
        """The environment every query selects: the one given, else the only one scraped (ConfigError if several)."""
        if self.environment is None:
            found = sorted({series["metric"].get("environment", "") for series in self._query(ENVIRONMENTS_QUERY)})
            if len(found) != 1:
                what = ", ".join(repr(env) for env in found) if found else "none (no api_requests_total series)"
                raise ConfigError(
                    f"Prometheus at {redact(self.url)} scrapes the API in environments {what}: set "
                    f"{ENVIRONMENT_VAR} to the environment whose versions to judge"
                )
            self.environment = found[0]
        return self.environment

    def snapshot(self) -> Snapshot:
        """One instant query per metric read, in the selected environment, summed over what tells replicas apart."""
        selector = "{environment=" + promql_string(self.selected()) + "}"
        out: Snapshot = {}
        for name in READ:
            how = "max" if name in GAUGES else "sum"
            for series in self._query(f"{how} without ({', '.join(sorted(PER_REPLICA))}) ({name}{selector})"):
                _add(out, name, series["metric"], float(series["value"][1]))
        return out

    def _query(self, query: str) -> list[dict]:
        """The result of an instant query; InfrastructureError when Prometheus cannot answer it."""
        try:
            answer = httpx.get(self.url + "/api/v1/query", params={"query": query}, timeout=10)
            answer.raise_for_status()
            return answer.json()["data"]["result"]
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            raise InfrastructureError(f"cannot query {redact(self.url)}: {redact(exc)}") from None


def promql_string(value: str) -> str:
    """`value` as a double-quoted PromQL string literal: backslash, quote and control characters escaped."""
    escaped = []
    for char in value:
        if char in '\\"':
            escaped.append("\\" + char)
        elif char == "\n":
            escaped.append("\\n")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\x{ord(char):02x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _add(snapshot: Snapshot, name: str, labels: Mapping[str, str], value: float) -> None:
    key = (name, labels_of({k: v for k, v in labels.items() if k not in PER_REPLICA and k != "__name__"}))
    if name in GAUGES:
        snapshot[key] = max(snapshot.get(key, value), value)
    else:
        snapshot[key] = snapshot.get(key, 0.0) + value


def metrics_source(api_urls: Sequence[str], env: Mapping[str, str] | None = None) -> MetricsSource:
    """Prometheus when PROMETHEUS_URL is set, else the replicas given with --api-url; ConfigError without either.

    Prometheus is read in PROMETHEUS_ENVIRONMENT's environment, else in the only one it scrapes.
    """
    env = PipelineEnv.read().prometheus_vars() if env is None else env
    if env.get(PROMETHEUS_VAR):
        return Prometheus(env[PROMETHEUS_VAR], env.get(ENVIRONMENT_VAR) or None)
    if api_urls:
        return Replicas(api_urls)
    raise ConfigError(f"no live metrics to judge: set {PROMETHEUS_VAR}, or give the replicas with --api-url")
