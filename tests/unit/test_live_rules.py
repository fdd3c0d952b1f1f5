"""Rollout and bake arithmetic on snapshots of the API's counters, and how a phase reads as passed."""

import pytest

from gates.live_rules import (
    VersionWindow,
    buckets,
    ceiling,
    labels_of,
    psi,
    quantile,
    shadow_counts,
    shadow_score_shares,
    window,
)
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


def test_shadow_compares_both_versions_on_the_same_records():
    snapshot = histogram("api_shadow_production_score", [30, 10, 0], version="5")
    snapshot.update(histogram("api_score", [30, 10, 0], version="5"))
    snapshot[("api_shadow_agreement_total", labels_of({"version": "5", "agree": "true"}))] = 38
    snapshot[("api_shadow_agreement_total", labels_of({"version": "5", "agree": "false"}))] = 2
    production, shadow = shadow_score_shares(snapshot, "5")
    assert production == shadow == [0.75, 0.25, 0.0] and psi(production, shadow) == 0
    assert shadow_counts(snapshot, "5") == (40, 2)
    shifted = {**snapshot, **histogram("api_score", [10, 30, 0], version="5")}
    assert psi(*shadow_score_shares(shifted, "5")) > 0.5
    assert buckets(snapshot, "api_score", version="6") == []


def test_a_ceiling_that_is_off_is_not_judged_and_nothing_measured_fails():
    assert ceiling("max_p99_ms", "p99_ms", None, 900.0, "p99") is None
    assert not ceiling("max_p99_ms", "p99_ms", 250.0, None, "p99").passed
    held = ceiling("max_p99_ms", "p99_ms", 250.0, 120.0, "p99")
    assert held.passed and held.detail == "p99 120 ≤ 250"


def test_a_phase_passes_once_judged_even_with_every_rule_off_and_never_without_a_verdict():
    passed = RuleResult("max_p99_ms", "p99_ms", 250.0, 120.0, True, "")
    failed = RuleResult("max_p99_ms", "p99_ms", 250.0, 900.0, False, "")
    assert Phase("shadow", "shadow", 0, judged=True).passed  # every rule off
    assert Phase("canary 10 %", "canary", 10, rules=[passed], judged=True).passed
    assert not Phase("canary 10 %", "canary", 10, rules=[passed, failed], judged=True).passed
    assert not Phase("canary 10 %", "canary", 10).passed  # stopped before its window was judged
    assert not Phase("shadow", "shadow", 0, judged=True, note="timed out").passed
