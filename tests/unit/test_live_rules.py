"""Rollout and bake arithmetic on snapshots of the API's counters, and how a phase reads as passed."""

import pytest

from gates.live_decisions import Counted, ShadowCounted
from gates.live_rules import (
    VersionWindow,
    buckets,
    labels_of,
    quantile,
    window,
)
from gates.psi import psi
from gates.rollout_report import Phase
from gates.rules import RuleResult

BOUNDS = ("0.5", "1.0", "+Inf")


def histogram(name: str, counts: list[float], **labels: str) -> dict:
    """Cumulative buckets of `counts` (one per bound) as snapshot samples."""
    out, running = {}, 0.0
    for bound, count in zip(BOUNDS, counts, strict=True):
        running += count
        out[(f"{name}_bucket", labels_of({**labels, "le": bound}))] = running
    return out


def requests(version: str, status: str, n: float) -> dict:
    return {("api_requests_total", labels_of({"version": version, "endpoint": "/predict", "status": status})): n}


def test_a_window_is_what_counters_added_and_a_restarted_replica_counts_from_zero():
    key = ("api_requests_total", labels_of({"version": "2"}))
    gauge = ("api_feature_expected_ratio", labels_of({"version": "2"}))
    assert window({key: 10, gauge: 0.3}, {key: 25, gauge: 0.2}) == {key: 15, gauge: 0.2}
    assert window({key: 10}, {key: 4}) == {key: 4}  # the counter went back: a restart, its 4 since


def test_version_window_ratios_and_p99_from_histogram_buckets():
    snapshot = {**requests("3", "200", 90), **requests("3", "503", 6), **requests("3", "422", 4)}
    snapshot.update(histogram("api_request_latency_seconds", [98, 2, 0], version="3", endpoint="/predict"))
    ours = VersionWindow.of(snapshot, "3")
    assert (ours.requests, ours.error_ratio, ours.client_error_ratio) == (100, 0.06, 0.04)
    assert ours.p99_ms == pytest.approx(750.0)  # rank 99 of 100: halfway into the (0.5, 1.0] bucket
    assert VersionWindow.of(snapshot, "4").error_ratio is None  # no request: nothing to judge
    assert quantile(0.5, []) is None


def test_shadow_decisions_count_one_record_per_request_and_psi_compares_shares():
    snapshot = {
        ("api_shadow_decision_total", labels_of({"version": "5", "event": event})): value
        for event, value in (("counted", 40), ("disagreed", 2), ("moved", 3), ("refused", 1))
    }
    assert ShadowCounted.of(snapshot, "5") == ShadowCounted(40, 2, 3, 1)
    assert ShadowCounted.of(snapshot, "6") == ShadowCounted(0, 0, 0, 0)
    assert psi([0.75, 0.25, 0.0], [0.75, 0.25, 0.0]) == 0 and psi([0.75, 0.25, 0.0], [0.25, 0.75, 0.0]) > 0.5
    assert buckets(snapshot, "api_score", version="6") == []


def test_slow_requests_are_read_above_the_asked_bucket_only():
    snapshot = histogram("api_decision_latency_seconds", [30, 10, 5], version="3")
    assert Counted.of(snapshot, "3", slow_ms=500).slow == 15
    assert Counted.of(snapshot, "3", slow_ms=1000).slow == 5
    assert Counted.of(snapshot, "3", slow_ms=50).slow is None  # not a bound: nothing is guessed


def test_a_phase_passes_once_judged_even_with_every_rule_off_and_never_without_a_verdict():
    passed = RuleResult("max_p99_ms", "p99_ms", 250.0, 120.0, True, "")
    failed = RuleResult("max_p99_ms", "p99_ms", 250.0, 900.0, False, "")
    assert Phase("shadow", "shadow", 0, judged=True).passed  # every rule off
    assert Phase("canary 10 %", "canary", 10, rules=[passed], judged=True).passed
    assert not Phase("canary 10 %", "canary", 10, rules=[passed, failed], judged=True).passed
    assert not Phase("canary 10 %", "canary", 10).passed  # stopped before its window was judged
    assert not Phase("shadow", "shadow", 0, judged=True, note="timed out").passed
