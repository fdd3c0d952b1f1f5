"""Live metrics from Prometheus: every query selects one environment, named or the only one scraped.

A tiny stand-in for Prometheus' HTTP API (a real server on a free port, in a
thread) answers the two query shapes live_metrics sends, from a list of
series, and records every query it was sent.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from gates.live_rules import labels_of
from pipeline.core.errors import ConfigError, InfrastructureError
from pipeline.runtime.live_metrics import (
    ENVIRONMENT_VAR,
    ENVIRONMENTS_QUERY,
    PROMETHEUS_VAR,
    READ,
    Prometheus,
    Replicas,
    metrics_source,
    promql_string,
)

Series = tuple[str, dict[str, str], float]
SUMMED = re.compile(r'(sum|max) without \(([^)]*)\) \((\w+)\{environment="((?:[^"\\]|\\.)*)"\}\)')


def unescape(literal: str) -> str:
    """A PromQL double-quoted string's content as Go reads it (the escapes promql_string writes)."""
    plain = {"n": "\n", "\\": "\\", '"': '"'}
    return re.sub(r'\\(x[0-9a-f]{2}|n|\\|")', lambda m: plain.get(m[1]) or chr(int(m[1][1:], 16)), literal)


class FakePrometheus:
    """Answers `count by (environment) (api_requests_total)` and `sum|max without (...) (name{environment="X"})`."""

    def __init__(self, series: list[Series]) -> None:
        self.series = series
        self.queries: list[str] = []
        self.status = 200

    def answer(self, query: str) -> list[dict]:
        self.queries.append(query)
        if query == ENVIRONMENTS_QUERY:
            counts: dict[str, int] = {}
            for name, labels, _ in self.series:
                if name == "api_requests_total":
                    counts[labels.get("environment", "")] = counts.get(labels.get("environment", ""), 0) + 1
            return [{"metric": {"environment": e} if e else {}, "value": [0, str(n)]} for e, n in counts.items()]
        how, without, name, env = SUMMED.fullmatch(query).groups()
        dropped = {label.strip() for label in without.split(",")}
        groups: dict[tuple, float] = {}
        for series_name, labels, value in self.series:
            if series_name == name and labels.get("environment", "") == unescape(env):
                key = tuple(sorted((k, v) for k, v in labels.items() if k not in dropped))
                old = groups.get(key)
                groups[key] = value if old is None else (max(old, value) if how == "max" else old + value)
        return [{"metric": dict(key), "value": [0, str(value)]} for key, value in groups.items()]


@pytest.fixture
def prometheus() -> Iterator[tuple[str, FakePrometheus]]:
    fake = FakePrometheus([])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)["query"][0]
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": fake.answer(query)}})
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", fake
    finally:
        server.shutdown()
        server.server_close()


def requests(environment: str | None, version: str, n: float, instance: str = "a:8000") -> Series:
    labels = {"job": "churn-api", "instance": instance, "version": version, "endpoint": "/predict", "status": "200"}
    return "api_requests_total", labels | ({} if environment is None else {"environment": environment}), n


def decisions(environment: str, version: str, n: float, instance: str = "a:8000") -> Series:
    labels = {"job": "churn-api", "instance": instance, "version": version, "environment": environment}
    return "api_decision_requests_total", labels, n


REQUESTS_7 = ("api_requests_total", labels_of({"version": "7", "endpoint": "/predict", "status": "200"}))
DECISIONS_7 = ("api_decision_requests_total", labels_of({"version": "7"}))


def test_the_decision_metrics_are_read_besides_the_existing_ones():
    assert set(READ) >= {
        "api_decision_requests_total",
        "api_decision_events_total",
        "api_decision_latency_seconds_bucket",
        "api_shadow_decision_total",
        "api_requests_total",
        "api_request_latency_seconds_bucket",
        "api_feature_values_total",
        "api_feature_expected_ratio",
    }


def test_a_named_environment_is_the_only_one_read_and_summed_over_replicas(prometheus):
    url, fake = prometheus
    fake.series = [
        requests("production", "7", 10, "a:8000"),
        requests("production", "7", 5, "b:8000"),
        requests("staging", "7", 1000),  # staging's version 7 is another model
        decisions("production", "7", 12, "a:8000"),
        decisions("production", "7", 3, "b:8000"),
        decisions("staging", "7", 900),
    ]
    source = Prometheus(url, "production")
    snapshot = source.snapshot()
    assert snapshot[REQUESTS_7] == 15 and snapshot[DECISIONS_7] == 15
    assert ENVIRONMENTS_QUERY not in fake.queries  # named: nothing to find out
    assert len(fake.queries) == len(READ)
    assert all(query.endswith('{environment="production"})') for query in fake.queries), fake.queries
    assert "environment 'production'" in source.describe()


def test_without_a_name_the_only_environment_scraped_is_read(prometheus):
    url, fake = prometheus
    fake.series = [requests("staging", "7", 4), requests("staging", "8", 6, "b:8000")]
    source = metrics_source([], {PROMETHEUS_VAR: url})
    assert source.describe() == f"Prometheus at {url.rstrip('/')}, environment 'staging'"
    assert fake.queries == [ENVIRONMENTS_QUERY]  # asked once, before any snapshot query
    snapshot = source.snapshot()
    assert snapshot[REQUESTS_7] == 4
    assert fake.queries.count(ENVIRONMENTS_QUERY) == 1
    assert all(q.endswith('{environment="staging"})') for q in fake.queries[1:]), fake.queries


def test_series_without_an_environment_label_are_environment_empty(prometheus):
    url, fake = prometheus
    fake.series = [requests(None, "7", 3)]
    source = Prometheus(url)
    assert source.snapshot()[REQUESTS_7] == 3
    assert fake.queries[-1].endswith('{environment=""})')


@pytest.mark.parametrize(
    ("environments", "named"),
    [(["production", "staging"], "'production', 'staging'"), ([None, "production"], "'', 'production'")],
)
def test_several_environments_scraped_and_none_named_is_refused(prometheus, environments, named):
    url, fake = prometheus
    fake.series = [requests(environment, "7", 1) for environment in environments]
    source = metrics_source(["http://replica:8000"], {PROMETHEUS_VAR: url, ENVIRONMENT_VAR: ""})
    with pytest.raises(ConfigError, match=re.escape(named)) as caught:
        source.snapshot()
    assert ENVIRONMENT_VAR in str(caught.value) and caught.value.exit_code == 2
    assert fake.queries == [ENVIRONMENTS_QUERY]  # nothing summed over a mix of environments


def test_no_api_series_at_all_is_refused_naming_the_variable(prometheus):
    url, _ = prometheus
    with pytest.raises(ConfigError, match=f"none .*{ENVIRONMENT_VAR}"):
        Prometheus(url).describe()


def test_the_variable_names_the_environment(prometheus):
    url, fake = prometheus
    fake.series = [requests("production", "7", 2), requests("staging", "7", 9)]
    source = metrics_source([], {PROMETHEUS_VAR: url, ENVIRONMENT_VAR: "staging"})
    assert isinstance(source, Prometheus) and source.environment == "staging"
    assert source.snapshot()[REQUESTS_7] == 9


def test_an_environment_value_is_escaped_in_every_query(prometheus):
    url, fake = prometheus
    odd = 'prod"} or vector(1) or {x="\\\n'
    fake.series = [requests(odd, "7", 5), requests("production", "7", 100)]
    assert Prometheus(url, odd).snapshot()[REQUESTS_7] == 5
    assert all(q.endswith('{environment="prod\\"} or vector(1) or {x=\\"\\\\\\n"})') for q in fake.queries)


def test_promql_strings():
    assert promql_string("production") == '"production"'
    assert promql_string('a"b\\c\nd\te') == '"a\\"b\\\\c\\nd\\x09e"'
    assert promql_string("é") == '"é"'


def test_an_unreadable_prometheus_is_an_infrastructure_error(prometheus):
    url, fake = prometheus
    fake.status = 503
    with pytest.raises(InfrastructureError, match="cannot query"):
        Prometheus(url, "production").snapshot()


def test_replicas_and_the_choice_of_source_are_unchanged():
    assert isinstance(metrics_source(["http://a:8000/"], {}), Replicas)
    assert (
        metrics_source(["http://a:8000/"], {ENVIRONMENT_VAR: "production"}).describe()
        == "the /metrics of http://a:8000"
    )
    with pytest.raises(ConfigError, match=PROMETHEUS_VAR):
        metrics_source([], {ENVIRONMENT_VAR: "production"})
