"""params.yaml's `rollout` section: the shadow phase, the canary steps and their rules, and the bake."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from pipeline.core.params_section import ALIAS_NAME, RESERVED_ALIAS, Section

# `rollout`: how a new version reaches production through shadow and canary steps, and the bake after it.
# Every rule is a sequential test (gates/sequential.py): the params name the rate a rule tolerates and the
# smallest effect it must catch; the planned sample sizes follow from those, `alpha` and `power`. Defaults suit
# the generated data: a retrain of production agrees with it on more than 99 % of records.
Share = Annotated[float, Field(gt=0, le=1)]
Seconds = Annotated[float, Field(gt=0)]
Rate = Annotated[float, Field(ge=0, lt=1)]
Effect = Annotated[float, Field(gt=0, le=1)]
# Per-record latency buckets of api_decision_latency_seconds, in ms: a slow threshold must be one of them.
LATENCY_BOUNDS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


def latency_bucket(value: float) -> float:
    """`value` if it is a bound of the per-record latency histogram (ms); ValueError otherwise."""
    if value not in LATENCY_BOUNDS_MS:
        raise ValueError(f"must be one of the latency buckets {list(LATENCY_BOUNDS_MS)} (ms)")
    return value


class RateRule(Section):
    """A rate held to `tolerated`; `effect` is the smallest excess the rule must catch (at `rollout.power`)."""

    tolerated: Rate
    effect: Effect

    @model_validator(mode="after")
    def _within_one(self) -> RateRule:
        if self.tolerated + self.effect > 1:
            raise ValueError("tolerated + effect is a rate, at most 1")
        return self


class RatioRule(Section):
    """The candidate's rate of an event against production's in the same window, as a ratio.

    `tolerated_ratio`: what is not held against it; `effect_ratio`: what must be caught, planned at a
    candidate rate of `min_rate` (rarer events than that are not worth the traffic they would need).
    """

    tolerated_ratio: Annotated[float, Field(ge=1)] = 1.0
    effect_ratio: Annotated[float, Field(gt=1)]
    min_rate: Effect

    @model_validator(mode="after")
    def _effect_above_tolerance(self) -> RatioRule:
        if self.effect_ratio <= self.tolerated_ratio:
            raise ValueError("effect_ratio must be above tolerated_ratio")
        return self


class SlowRule(RateRule):
    """Requests slower than `slow_ms` per record (timed from the complete body to the answer)."""

    slow_ms: float = 50.0

    @field_validator("slow_ms")
    @classmethod
    def _a_bucket(cls, value: float) -> float:
        return latency_bucket(value)


class SlowRatioRule(RatioRule):
    """The candidate's share of requests slower than `slow_ms` per record, against production's."""

    slow_ms: float = 50.0

    @field_validator("slow_ms")
    @classmethod
    def _a_bucket(cls, value: float) -> float:
        return latency_bucket(value)


class ShadowPhase(Section):
    """Production answers; a sampled copy goes to the canary; the two are compared on the same records."""

    sample_share: Share = 0.5
    min_duration_s: Seconds = 30
    # One record of each shadowed request: the candidate labels it otherwise than production ...
    disagreement: RateRule | None = RateRule(tolerated=0.01, effect=0.04)
    # ... or moves its probability by more than 0.1 ...
    moved: RateRule | None = RateRule(tolerated=0.02, effect=0.08)
    # ... or refuses (or fails on) a request production answered.
    refused: RateRule | None = RateRule(tolerated=0.001, effect=0.01)


class CanaryStep(Section):
    """The canary answers `weight` percent of customers for at least this long, and until its plan is met."""

    weight: Annotated[int, Field(gt=0, le=100)]
    min_duration_s: Seconds = 30


class StepRules(Section):
    """What each canary step is judged by: the candidate against production, same window, same kind of traffic."""

    errors: RatioRule | None = RatioRule(effect_ratio=3.0, min_rate=0.01)  # 5xx per counted request
    slow: SlowRatioRule | None = SlowRatioRule(effect_ratio=3.0, min_rate=0.05)
    # The share of positive labels, both ways: a shifted score distribution moves it.
    positives: RatioRule | None = RatioRule(tolerated_ratio=1.1, effect_ratio=1.5, min_rate=0.1)
    refused: RateRule | None = RateRule(tolerated=0.001, effect=0.01)  # records production accepts


class QualityRule(Section):
    """A rule on a version's signed live quality verdict (`python -m pipeline quality`), judged on its figures.

    Fails when the verdict rests on at least `min_labelled` labelled predictions and a drop of more than
    `max_drop` below the gate's figure is established: the upper bound of (live - gate), the live interval
    and the gate's combined (gates/live_quality.py), lies below -max_drop. Fewer rows, or no verdict: not judged.
    """

    min_labelled: Annotated[int, Field(gt=0)] = 200
    max_drop: Annotated[float, Field(ge=0, le=1)] = 0.05


class OutcomesParams(Section):
    """Delayed outcomes and live quality: `outcomes` joins labels to the prediction log, `quality` judges versions."""

    horizon_days: Annotated[float, Field(gt=0)] = 30  # an outcome by customer labels predictions this long before it
    min_labelled: Annotated[int, Field(gt=0)] = 200  # fewer labelled predictions of a version: inconclusive
    # A gated metric (gates.metrics) whose live value is below the version's gate figure by more than this,
    # established on the intervals, fails quality (null: only the floors gates.metrics.*.min are held live).
    max_drop: Annotated[float, Field(ge=0, le=1)] | None = 0.05
    # The chance that quality ever fails a version whose live quality is in fact acceptable, over its first
    # `max_looks` looks (each `quality` run is a look; later looks are inconclusive: reset by a new version).
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    max_looks: Annotated[int, Field(gt=0, le=10_000)] = 30


class BakeRules(Section):
    """After promotion, `watch` judges production for `duration_s`; a rule that fails rolls it back.

    Only what the version causes acts: its 5xx and its slowness. Client errors and input drift are
    shown, and page a person through the alerts: rolling back cures neither.
    """

    duration_s: Seconds = 300
    poll_s: Seconds = 10
    errors: RateRule | None = RateRule(tolerated=0.002, effect=0.02)
    slow: SlowRule | None = SlowRule(tolerated=0.01, effect=0.04)
    quality: QualityRule | None = None  # production's signed quality verdict; failing it rolls back (null: off)


class RolloutParams(Section):
    """`rollout`: the canary alias, the shadow phase, the canary steps and their rules, the bake."""

    canary_alias: str = "canary"
    # The chance that one rollout aborts a candidate that behaves as production does, over all its looks;
    # and the chance that one bake rolls back a healthy production. Split evenly among the rules.
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    power: Annotated[float, Field(ge=0.5, lt=1)] = 0.95  # the chance each rule's effect is caught by its plan
    shadow: ShadowPhase = ShadowPhase()
    steps: list[CanaryStep] = [CanaryStep(weight=10), CanaryStep(weight=50)]  # noqa: RUF012 (a pydantic field: each instance gets a copy)
    step_rules: StepRules = StepRules()
    bake: BakeRules = BakeRules()
    phase_timeout_s: Seconds = 600  # a phase that has not seen its requests by then aborts the rollout
    quality: QualityRule | None = None  # the candidate's signed quality verdict; failing it: not promoted (null: off)
    outcomes: OutcomesParams = OutcomesParams()
    poll_s: Seconds = 2  # how often live metrics are read during a phase

    @field_validator("canary_alias")
    @classmethod
    def _alias_name(cls, value: str) -> str:
        if not ALIAS_NAME.match(value) or RESERVED_ALIAS.match(value):
            raise ValueError("not a valid alias name")
        return value

    @field_validator("steps")
    @classmethod
    def _growing(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        weights = [step.weight for step in steps]
        if weights != sorted(set(weights)):
            raise ValueError(f"canary weights must grow step by step, got {weights}")
        return steps
