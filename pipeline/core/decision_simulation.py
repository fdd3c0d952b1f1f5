"""A seeded simulation of rollouts and bakes, driving the very rules rollout and watch use (release_rules.py).

Honest traffic is drawn from the data: each request is one customer drawn
from a pool of the data's rows, and its positive label is that row's label.
Each rollout draws its own key, so each customer lands on the canary with
probability `weight` and stays there for the rest of the rollout (as the
replicas' keyed split does). At every poll the counters a replica keeps for
decisions grow by that poll's requests, and the rules look at the window, as
the stage's loop does: abort at once on a failed rule, pass once every plan
is in (and the phase is old enough), abort when the phase times out.

A scenario says how the candidate behaves against production: identical, or
worse by the smallest effect one rule names. `simulate` runs a scenario many
times and reports how often the rollout aborted (or the bake rolled back) and
how many requests it took.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from gates.live_decisions import phase_outcome
from gates.live_rules import Snapshot, labels_of
from gates.rollout_report import Phase
from pipeline.core.release_rules import BakeJudge, RolloutJudge
from pipeline.core.rollout_params import RolloutParams

CANDIDATE, PRODUCTION = "2", "1"
LATENCY_BOUNDS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Rates:
    """How often a version's counted request fails (5xx), is slow, is refused; how it shifts positives."""

    errors: float = 0.005
    slow: float = 0.02
    refused: float = 0.0
    positives_ratio: float = 1.0  # its positive labels against production's
    # Shadow only, on the same records:
    disagreement: float = 0.0
    moved: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """A candidate (and production) to roll out, or a production to bake."""

    name: str
    candidate: Rates
    production: Rates = Rates()
    worse: bool = False  # whether a correct decision is to abort (or roll back)


@dataclass
class Outcome:
    """One scenario's runs: how many aborted (or rolled back), and the requests each run saw before it ended."""

    scenario: Scenario
    runs: int = 0
    acted: int = 0
    requests_to_act: list[int] = field(default_factory=list)
    requests_to_pass: list[int] = field(default_factory=list)

    @property
    def share_acted(self) -> float:
        """Share of runs that aborted (rollout) or rolled back (bake)."""
        return self.acted / self.runs if self.runs else 0.0


class _Counters:
    """The decision counters of the two versions, cumulated since the phase began."""

    def __init__(self) -> None:
        self.values: Snapshot = {}

    def add(self, name: str, value: float, **labels: str) -> None:
        key = (name, labels_of(labels))
        self.values[key] = self.values.get(key, 0.0) + value

    def version(self, version: str, rates: Rates, n: int, positives: int, rng: np.random.Generator) -> None:
        """`n` counted requests of `version`, `positives` of them labelled positive."""
        self.add("api_decision_requests_total", n, version=version)
        self.add("api_decision_events_total", rng.binomial(n, rates.errors), version=version, event="error")
        self.add("api_decision_events_total", rng.binomial(n, rates.refused), version=version, event="refused")
        self.add("api_decision_events_total", positives, version=version, event="positive")
        slow = rng.binomial(n, rates.slow)
        for bound in LATENCY_BOUNDS_S:  # every slow request lands above 50 ms, the rest at 1 ms
            below = n - slow if bound < 0.1 else n
            self.add("api_decision_latency_seconds_bucket", below if bound >= 0.001 else 0, version=version,
                     le=_le(bound))  # fmt: skip
        self.add("api_decision_latency_seconds_bucket", n, version=version, le="+Inf")

    def shadow(self, rates: Rates, n: int, rng: np.random.Generator) -> None:
        self.add("api_shadow_decision_total", n, version=CANDIDATE, event="counted")
        for event, rate in (("disagreed", rates.disagreement), ("moved", rates.moved), ("refused", rates.refused)):
            self.add("api_shadow_decision_total", rng.binomial(n, rate), version=CANDIDATE, event=event)


def _le(bound: float) -> str:
    return repr(float(bound))


def _positives(labels: np.ndarray, ratio: float, rng: np.random.Generator) -> int:
    """Positives among customers whose production labels are `labels`, for a version at `ratio` times production's."""
    base = int(labels.sum())
    if ratio == 1.0 or not len(labels):
        return base
    rate = labels.mean() if len(labels) else 0.0
    if ratio > 1:  # some negatives turn positive
        flip = min(1.0, (ratio - 1) * rate / max(1 - rate, 1e-9))
        return base + int(rng.binomial(len(labels) - base, flip))
    return int(rng.binomial(base, ratio))


def rollout_once(params: RolloutParams, scenario: Scenario, pool: np.ndarray, rate_per_s: float,
                 rng: np.random.Generator) -> tuple[bool, int]:  # fmt: skip
    """One rollout: (aborted, requests it saw until it ended)."""
    judge = RolloutJudge(params, CANDIDATE, PRODUCTION)
    key = rng.random(len(pool))  # this rollout's split: customer i is on the canary while key[i] < weight
    seen = 0
    phases = [("shadow", 0, params.shadow.min_duration_s, False)] + [
        ("canary", s.weight, s.min_duration_s, i == len(params.steps) - 1) for i, s in enumerate(params.steps)
    ]
    for mode, weight, min_duration, last in phases:
        counters, phase, elapsed = _Counters(), Phase(mode, mode, weight), 0.0
        while True:
            elapsed += params.poll_s
            n = int(rng.poisson(rate_per_s * params.poll_s))
            seen += n
            customers = rng.integers(0, len(pool), n)
            labels = pool[customers]
            if mode == "shadow":
                counters.version(PRODUCTION, scenario.production, n, int(labels.sum()), rng)
                counters.shadow(scenario.candidate, int(rng.binomial(n, params.shadow.sample_share)), rng)
                looks = judge.shadow(counters.values, phase)
            else:
                on_canary = key[customers] < weight / 100
                ours, theirs = labels[on_canary], labels[~on_canary]
                counters.version(CANDIDATE, scenario.candidate, len(ours),
                                 _positives(ours, scenario.candidate.positives_ratio, rng), rng)  # fmt: skip
                counters.version(PRODUCTION, scenario.production, len(theirs), int(theirs.sum()), rng)
                looks = judge.step(counters.values, phase, planned=last)
            outcome = phase_outcome(looks, elapsed, min_duration)
            if outcome == "abort" or (outcome is None and elapsed > params.phase_timeout_s):
                return True, seen
            if outcome == "pass":
                break
    return False, seen


def bake_once(params: RolloutParams, scenario: Scenario, rate_per_s: float, rng: np.random.Generator
              ) -> tuple[bool, int]:  # fmt: skip
    """One bake of production (`scenario.candidate` is production here): (rolled back, requests seen)."""
    judge, counters, phase = BakeJudge(params, CANDIDATE), _Counters(), Phase("bake", "bake", 100)
    elapsed, seen, bake = 0.0, 0, params.bake
    while elapsed < bake.duration_s:
        elapsed += bake.poll_s
        n = int(rng.poisson(rate_per_s * bake.poll_s))
        seen += n
        counters.version(CANDIDATE, scenario.candidate, n, 0, rng)
        if any(look.failed for look in judge.looks(counters.values, phase)):
            return True, seen
    return False, seen


def simulate(params: RolloutParams, scenario: Scenario, runs: int, seed: int, pool: np.ndarray,
             rate_per_s: float = 50.0, bake: bool = False) -> Outcome:  # fmt: skip
    """Run a scenario `runs` times (a rollout each, or a bake each), seeded."""
    rng = np.random.default_rng(seed)
    outcome = Outcome(scenario)
    for _ in range(runs):
        acted, seen = bake_once(params, scenario, rate_per_s, rng) if bake else rollout_once(
            params, scenario, pool, rate_per_s, rng)  # fmt: skip
        outcome.runs += 1
        outcome.acted += acted
        (outcome.requests_to_act if acted else outcome.requests_to_pass).append(seen)
    return outcome


def rollout_scenarios(params: RolloutParams) -> list[Scenario]:
    """An identical candidate, and one worse by exactly the smallest effect each rule names."""
    base = Rates()
    shadow, steps = params.shadow, params.step_rules
    edge = replace(
        base,
        disagreement=shadow.disagreement.tolerated if shadow.disagreement else 0.0,
        moved=shadow.moved.tolerated if shadow.moved else 0.0,
        refused=min(r.tolerated for r in (shadow.refused, steps.refused) if r is not None)
        if shadow.refused or steps.refused else 0.0,
        positives_ratio=steps.positives.tolerated_ratio if steps.positives else 1.0,
    )  # fmt: skip
    scenarios = [Scenario("identical", base), Scenario("at tolerance", edge)]
    for name in ("disagreement", "moved"):
        rule = getattr(shadow, name)
        if rule is not None:
            scenarios.append(Scenario(f"shadow {name} {rule.tolerated + rule.effect:.0%}",
                                      replace(base, **{name: rule.tolerated + rule.effect}), worse=True))  # fmt: skip
    if shadow.refused is not None or steps.refused is not None:
        rule = shadow.refused or steps.refused
        assert rule is not None
        scenarios.append(Scenario(f"refuses {rule.tolerated + rule.effect:.1%}",
                                  replace(base, refused=rule.tolerated + rule.effect), worse=True))  # fmt: skip
    if steps.errors is not None:
        r = steps.errors
        production = replace(base, errors=r.min_rate / r.effect_ratio)
        scenarios.append(Scenario(f"5xx {r.min_rate:.0%} vs {r.min_rate / r.effect_ratio:.2%}",
                                  replace(production, errors=r.min_rate), production, worse=True))  # fmt: skip
    if steps.slow is not None:
        r = steps.slow
        production = replace(base, slow=r.min_rate / r.effect_ratio)
        scenarios.append(Scenario(f"slow {r.min_rate:.0%} vs {r.min_rate / r.effect_ratio:.1%}",
                                  replace(production, slow=r.min_rate), production, worse=True))  # fmt: skip
    if steps.positives is not None:
        r = steps.positives
        scenarios.append(Scenario(f"positives x{r.effect_ratio:g}", replace(base, positives_ratio=r.effect_ratio),
                                  worse=True))  # fmt: skip
        scenarios.append(Scenario(f"positives x{1 / r.effect_ratio:.2g}",
                                  replace(base, positives_ratio=1 / r.effect_ratio), worse=True))  # fmt: skip
    return scenarios


def bake_scenarios(params: RolloutParams) -> list[Scenario]:
    """A healthy production (at its tolerated rates), and one worse by each bake rule's effect."""
    bake = params.bake
    errors, slow = bake.errors, bake.slow
    healthy = Rates(errors=errors.tolerated if errors else 0.0, slow=slow.tolerated if slow else 0.0)
    scenarios = [Scenario("healthy (at tolerance)", healthy)]
    if errors is not None:
        worse = errors.tolerated + errors.effect
        scenarios.append(Scenario(f"5xx {worse:.1%}", replace(healthy, errors=worse), worse=True))
    if slow is not None:
        worse = slow.tolerated + slow.effect
        scenarios.append(Scenario(f"slow {worse:.0%}", replace(healthy, slow=worse), worse=True))
    return scenarios
