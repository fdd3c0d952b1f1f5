"""What rollout and watch decide on: only what a version causes, from the counters the replicas keep for decisions.

The replicas count each request once, whatever its number of records, and
each client only up to a budget per second (api/client_budget.py), so one
huge batch or one flooding client moves a window by little. From a window of
those counters (gates/live_rules.py) each rule reads a stream of yes/no
outcomes and judges it with an anytime-valid test (gates/sequential.py):

- shadow, on the same records: the candidate labels a record otherwise than
  production; moves its probability by more than 0.1; refuses or fails a
  request production answered (each one record per shadowed request);
- a canary step, paired with production in the same window on the same kind
  of traffic: the candidate's share of the 5xx, of the slow requests (per
  record, timed from the complete body) and of the positive labels, against
  its share of the requests;
- the bake, production alone: its 5xx and its slow requests.

Client errors and input drift are shown, never acted on: rolling back cures
neither. α is split evenly over every rule a rollout (or a bake) judges, and
each rule may look at every poll: the chance of a false abort (or rollback)
over the whole rollout (or bake) is at most α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from gates.live_rules import Snapshot, buckets, total
from gates.rules import RuleResult
from gates.sequential import RateTest, ShareTest

MOVED_DELTA = 0.1  # a shadowed record's probability "moved" beyond this (api/shadow_tally.py counts it)


@dataclass(frozen=True)
class Counted:
    """One version's counted requests in a window, and how many had each outcome a decision uses."""

    requests: float
    errors: float
    refused: float
    positives: float
    slow: float | None  # None: no threshold asked, or not a bound of the histogram

    @classmethod
    def of(cls, window: Snapshot, version: str, slow_ms: float | None = None) -> Counted:
        """The version's counted requests in `window`, slow meaning over `slow_ms` per record."""
        requests = total(window, "api_decision_requests_total", version=version)
        events = {
            event: total(window, "api_decision_events_total", version=version, event=event)
            for event in ("error", "refused", "positive")
        }
        return cls(requests, events["error"], events["refused"], events["positive"], _slow(window, version, slow_ms))


def _slow(window: Snapshot, version: str, slow_ms: float | None) -> float | None:
    if slow_ms is None:
        return None
    cumulative = buckets(window, "api_decision_latency_seconds", version=version)
    if not cumulative:
        return 0.0
    whole = cumulative[-1][1]
    for bound, count in cumulative:
        if math.isclose(bound, slow_ms / 1000, rel_tol=1e-9):
            return whole - count
    return None


@dataclass(frozen=True)
class ShadowCounted:
    """Shadowed requests in a window (one record each), and how often the candidate parted from production."""

    counted: float
    disagreed: float
    moved: float
    refused: float

    @classmethod
    def of(cls, window: Snapshot, version: str) -> ShadowCounted:
        """The candidate's shadow outcomes in `window`."""

        def get(event: str) -> float:
            return total(window, "api_shadow_decision_total", version=version, event=event)

        return cls(get("counted"), get("disagreed"), get("moved"), get("refused"))


@dataclass(frozen=True)
class Look:
    """One rule at one look: its verdict so far, and whether its planned sample is in."""

    result: RuleResult
    seen: float
    planned: float

    @property
    def complete(self) -> bool:
        """The rule has seen the outcomes after which its effect is caught with the planned power."""
        return self.seen >= self.planned

    @property
    def failed(self) -> bool:
        """The rule's evidence crossed 1/α: it acts now, however little traffic it saw."""
        return not self.result.passed


def phase_outcome(looks: list[Look], elapsed_s: float, min_duration_s: float) -> str | None:
    """Abort as soon as a rule fails, pass once every plan is in and the phase is old enough, else None."""
    if any(look.failed for look in looks):
        return "abort"
    if elapsed_s >= min_duration_s and all(look.complete for look in looks):
        return "pass"
    return None


def alpha_per_rule(alpha: float, rules: int) -> float:
    """Each rule's share of α (Bonferroni: the false alarms of all of them together stay within α)."""
    return alpha / max(rules, 1)


def judge_rate(rule: str, metric: str, what: str, test: RateTest, yes: float, n: float, power: float) -> Look:
    """A rate rule: `yes` of `n` outcomes, held to the test's tolerated rate."""
    evidence = _evidence(test, yes, n)
    failed = evidence >= 1 / test.alpha
    share = yes / n if n else None
    plan = test.planned(power)
    detail = (
        f"{what}: {yes:.0f} of {n:.0f}" + (f" ({share:.2%})" if share is not None else "")
        + f"; evidence {evidence:.3g} {'≥' if failed else '<'} 1/α = {1 / test.alpha:.3g}"
        + f"; tolerated {test.tolerated:.2%}, catches {test.tolerated + test.effect:.2%} within {plan}"
    )  # fmt: skip
    value = None if share is None else round(share, 6)
    return Look(RuleResult(rule, metric, test.tolerated, value, not failed, detail), n, plan)


def judge_share(
    rule: str,
    metric: str,
    what: str,
    test: ShareTest,
    min_rate: float,
    candidate: tuple[float, float],
    production: tuple[float, float],
    power: float,
) -> Look:
    """A paired rule: (events, counted requests) of the candidate and of production, in the same window."""
    (ours, ours_n), (theirs, theirs_n) = candidate, production
    if ours_n <= 0 or theirs_n <= 0:
        detail = f"{what}: no counted requests of {'the candidate' if ours_n <= 0 else 'production'} yet"
        return Look(RuleResult(rule, metric, test.tolerated_ratio, None, True, detail), 0, 1)
    share = ours_n / (ours_n + theirs_n)
    events = ours + theirs
    failed, evidence, strongest = False, 0.0, 1.0
    for direction, rate_test in test.tests(share):
        value = _evidence(rate_test, ours if direction == "above" else theirs, events)
        if value >= evidence:
            evidence, strongest = value, rate_test.alpha
        failed = failed or value >= 1 / rate_test.alpha
    # The plan, for the share rounded to a percent (planning is a search: it is cached per share).
    planned_share = min(max(round(share, 2), 0.01), 0.99)
    plan_events = max(rate_test.planned(power) for _, rate_test in test.tests(planned_share))
    # Requests after which that many events are there (at `power`, Poisson) when the candidate's rate is
    # min_rate and production's min_rate / effect_ratio.
    per_request = share * min_rate + (1 - share) * min_rate / test.effect_ratio
    plan = math.ceil((plan_events + NormalDist().inv_cdf(power) * math.sqrt(plan_events)) / per_request)
    ratio = (ours / ours_n) / (theirs / theirs_n) if theirs and ours_n else None
    shown = "-" if ratio is None else f"{ratio:.3g}"
    detail = (
        f"{what}: candidate {ours:.0f} of {ours_n:.0f}, production {theirs:.0f} of {theirs_n:.0f} "
        f"(ratio {shown}); evidence {evidence:.3g} {'≥' if failed else '<'} 1/α = {1 / strongest:.3g}; "
        f"tolerated ratio {test.tolerated_ratio:g}, catches {test.effect_ratio:g}"
        + (" either way" if test.two_sided else "") + f" within {plan} requests"
    )  # fmt: skip
    result = RuleResult(rule, metric, test.tolerated_ratio, None if ratio is None else round(ratio, 6), not failed,
                        detail)  # fmt: skip
    # Complete once the window holds the planned requests, or already the events they would bring.
    return Look(result, max(ours_n + theirs_n, events * plan / max(plan_events, 1)), plan)


def _evidence(test: RateTest, yes: float, n: float) -> float:
    return math.exp(min(test.log_evidence(yes, n), 700.0))
