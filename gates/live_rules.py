"""Rollout and bake rules, judged on live metrics: pure arithmetic over two snapshots of the API's counters.

A snapshot maps (metric name, labels) to a value, summed over replicas
(gauges of training shares: the largest). The window of a phase is the
difference of two snapshots, so each rule sees exactly that phase's requests,
from Prometheus or straight from the replicas' /metrics alike. Quantiles
interpolate within histogram buckets as Prometheus' histogram_quantile does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gates.psi import psi

Labels = tuple[tuple[str, str], ...]
Snapshot = dict[tuple[str, Labels], float]
TRAFFIC = ("/predict", "/invocations")
GAUGES = ("api_feature_expected_ratio",)


def labels_of(pairs: Mapping[str, str]) -> Labels:
    """Labels as a sorted tuple, the key form of a snapshot."""
    return tuple(sorted(pairs.items()))


def window(start: Snapshot, end: Snapshot) -> Snapshot:
    """What the counters added between two snapshots (a replica restarted: its counts since), gauges at the end."""
    out: Snapshot = {}
    for key, value in end.items():
        delta = value - start.get(key, 0.0)
        out[key] = value if key[0] in GAUGES or delta < 0 else delta
    return out


def total(snapshot: Snapshot, name: str, **match: str | Iterable[str]) -> float:
    """The sum of a metric's samples whose labels match (a string, or any of several)."""
    return sum(value for (metric, labels), value in snapshot.items() if metric == name and _matches(labels, match))


def _matches(labels: Labels, match: Mapping[str, str | Iterable[str]]) -> bool:
    found = dict(labels)
    for key, wanted in match.items():
        value = found.get(key)
        if isinstance(wanted, str):
            if value != wanted:
                return False
        elif value is None or value not in set(wanted):
            return False
    return True


def buckets(snapshot: Snapshot, name: str, **match: str | Iterable[str]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram's buckets, summed over the matching series, bounds ascending."""
    by_bound: dict[float, float] = {}
    for (metric, labels), value in snapshot.items():
        if metric == f"{name}_bucket" and _matches(labels, match):
            bound = float(dict(labels)["le"])
            by_bound[bound] = by_bound.get(bound, 0.0) + value
    return sorted(by_bound.items())


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram's cumulative buckets, as histogram_quantile computes it (None: no data)."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def shares(cumulative: list[tuple[float, float]]) -> list[float]:
    """Each bucket's share of a histogram's observations (not cumulative)."""
    previous = [0.0, *(count for _, count in cumulative)]
    counts = [count - before for (_, count), before in zip(cumulative, previous, strict=False)]
    whole = sum(counts)
    return [c / whole for c in counts] if whole else []


@dataclass(frozen=True)
class VersionWindow:
    """One version's traffic in a window: requests, errors, p99 and its score distribution."""

    version: str
    requests: float
    errors_5xx: float
    errors_4xx: float
    p99_ms: float | None
    scores: list[float] = field(default_factory=list)  # share per score bucket

    @classmethod
    def of(cls, snapshot: Snapshot, version: str) -> VersionWindow:
        """The version's figures in `snapshot` (a window)."""
        requests = total(snapshot, "api_requests_total", version=version, endpoint=TRAFFIC)
        statuses = [dict(labels).get("status", "") for (name, labels) in snapshot if name == "api_requests_total"]
        errors = {}
        for prefix in ("5", "4"):
            matching = [s for s in statuses if s.startswith(prefix)]
            errors[prefix] = total(snapshot, "api_requests_total", version=version, endpoint=TRAFFIC, status=matching)
        latency = buckets(snapshot, "api_request_latency_seconds", version=version, endpoint="/predict")
        p99 = quantile(0.99, latency)
        return cls(
            version, requests, errors["5"], errors["4"], None if p99 is None else p99 * 1000,
            shares(buckets(snapshot, "api_score", version=version)),
        )  # fmt: skip

    @property
    def error_ratio(self) -> float | None:
        """5xx per request (None: no request)."""
        return self.errors_5xx / self.requests if self.requests else None

    @property
    def client_error_ratio(self) -> float | None:
        """4xx per request (None: no request)."""
        return self.errors_4xx / self.requests if self.requests else None


def feature_psi(snapshot: Snapshot, version: str) -> dict[str, float]:
    """Each feature's PSI in the window: its served values' bin shares against its training shares."""
    counts: dict[str, dict[str, float]] = {}
    expected: dict[str, dict[str, float]] = {}
    for (name, labels), value in snapshot.items():
        found = dict(labels)
        if found.get("version") != version:
            continue
        target = counts if name == "api_feature_values_total" else expected if name in GAUGES else None
        if target is not None:
            target.setdefault(found["feature"], {})[found["bin"]] = value
    out = {}
    for feature, served in counts.items():
        whole = sum(served.values())
        if whole <= 0:
            continue
        bins = sorted(set(served) | set(expected.get(feature, {})))
        out[feature] = psi(
            [expected.get(feature, {}).get(b, 0.0) for b in bins], [served.get(b, 0.0) / whole for b in bins]
        )
    return out
