"""The rules of one rollout and of one bake, built from `params.yaml`'s `rollout`: pure, no I/O.

`RolloutJudge` and `BakeJudge` turn a window of live counters into Looks
(gates/live_decisions.py), one per rule that is on. α (`rollout.alpha`) is
split evenly over every rule the rollout judges in all its phases, or over
the bake's rules; each rule is anytime-valid, so the phase loop may look at
every poll. The simulation (benchmarks/live_decisions.py) drives these
same objects.
"""

from __future__ import annotations

from typing import Any

from gates.live_decisions import Counted, Look, ShadowCounted, alpha_per_rule, judge_rate, judge_share
from gates.live_rules import Snapshot, VersionWindow, feature_psi
from gates.rollout_report import Phase
from gates.sequential import RateTest, ShareTest
from pipeline.core.rollout_params import BakeRules, RateRule, RatioRule, RolloutParams

SHADOW_RULES = ("disagreement", "moved", "refused")
STEP_RULES = ("errors", "slow", "positives", "refused")
BAKE_RULES = ("errors", "slow")


def _on(section: Any, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if getattr(section, name) is not None]


def _rate(rule: RateRule, alpha: float) -> RateTest:
    return RateTest(rule.tolerated, rule.effect, alpha)


def _share(rule: RatioRule, alpha: float, two_sided: bool = False) -> ShareTest:
    return ShareTest(rule.tolerated_ratio, rule.effect_ratio, alpha, two_sided)


class RolloutJudge:
    """The shadow phase's and the canary steps' rules for one candidate against production."""

    def __init__(self, params: RolloutParams, version: str, production: str) -> None:
        self.params, self.version, self.production = params, version, production
        self.shadow_on = _on(params.shadow, SHADOW_RULES)
        self.step_on = _on(params.step_rules, STEP_RULES)
        self.alpha = alpha_per_rule(params.alpha, len(self.shadow_on) + len(params.steps) * len(self.step_on))

    def shadow(self, window: Snapshot, phase: Phase) -> list[Look]:
        """Shadow: on the same records, how often the candidate parts from production."""
        seen = ShadowCounted.of(window, self.version)
        phase.figures = {"shadowed requests": int(seen.counted), "disagreed": int(seen.disagreed),
                         "moved": int(seen.moved), "refused": int(seen.refused)}  # fmt: skip
        what = {
            "disagreement": ("labelled otherwise than production", seen.disagreed),
            "moved": ("probability moved by more than 0.1", seen.moved),
            "refused": ("refused or failed where production answered", seen.refused),
        }
        looks = []
        for name in self.shadow_on:
            text, yes = what[name]
            rule = getattr(self.params.shadow, name)
            looks.append(judge_rate(name, name, text, _rate(rule, self.alpha), yes, seen.counted, self.params.power))
        return looks

    def step(self, window: Snapshot, phase: Phase, planned: bool) -> list[Look]:
        """A canary step: the candidate against production in the same window (`planned`: hold until plans are in)."""
        rules = self.params.step_rules
        slow_ms = rules.slow.slow_ms if rules.slow is not None else None
        ours, theirs = Counted.of(window, self.version, slow_ms), Counted.of(window, self.production, slow_ms)
        phase.figures = {
            f"v{self.version} counted": int(ours.requests), f"v{self.production} counted": int(theirs.requests),
            f"v{self.version} 5xx": int(ours.errors), f"v{self.production} 5xx": int(theirs.errors),
        }  # fmt: skip
        looks = []
        power = self.params.power
        if rules.errors is not None:
            looks.append(judge_share("errors", "error_ratio", "5xx", _share(rules.errors, self.alpha),
                                     rules.errors.min_rate, (ours.errors, ours.requests),
                                     (theirs.errors, theirs.requests), power))  # fmt: skip
        if rules.slow is not None:
            looks.append(judge_share("slow", "slow_ratio", f"slower than {rules.slow.slow_ms:g} ms a record",
                                     _share(rules.slow, self.alpha), rules.slow.min_rate,
                                     (ours.slow or 0.0, ours.requests), (theirs.slow or 0.0, theirs.requests),
                                     power))  # fmt: skip
        if rules.positives is not None:
            looks.append(judge_share("positives", "positive_ratio", "positive labels",
                                     _share(rules.positives, self.alpha, two_sided=True), rules.positives.min_rate,
                                     (ours.positives, ours.requests), (theirs.positives, theirs.requests),
                                     power))  # fmt: skip
        if rules.refused is not None:
            looks.append(judge_rate("refused", "refused", "refused where production accepts",
                                    _rate(rules.refused, self.alpha), ours.refused, ours.requests, power))  # fmt: skip
        if not planned:  # an early step acts on evidence but waits for no plan: the last step holds the power
            looks = [Look(look.result, max(ours.requests, 1.0), 1.0) for look in looks]
        return looks


class BakeJudge:
    """The bake's rules for production alone: its own 5xx and slowness act; client errors and drift are shown."""

    def __init__(self, params: RolloutParams, version: str) -> None:
        self.params, self.bake, self.version = params, params.bake, version
        self.on = _on(params.bake, BAKE_RULES)
        self.alpha = alpha_per_rule(params.alpha, len(self.on))

    def looks(self, window: Snapshot, phase: Phase) -> list[Look]:
        """The bake's rules on the window so far, and what pages a person (4xx, drift) among the figures."""
        bake: BakeRules = self.bake
        slow_ms = bake.slow.slow_ms if bake.slow is not None else None
        ours, everything = Counted.of(window, self.version, slow_ms), VersionWindow.of(window, self.version)
        drift = feature_psi(window, self.version)
        worst = max(drift.items(), key=lambda item: item[1], default=(None, None))
        phase.figures = {
            "counted requests": int(ours.requests), "5xx": int(ours.errors),
            "4xx per request (pages, never acts)": _rounded(everything.client_error_ratio),
            "largest feature PSI (pages, never acts)": None if worst[0] is None else f"{worst[0]} {worst[1]:.3g}",
        }  # fmt: skip
        looks = []
        if bake.errors is not None:
            looks.append(judge_rate("errors", "error_ratio", "5xx", _rate(bake.errors, self.alpha), ours.errors,
                                    ours.requests, self.params.power))  # fmt: skip
        if bake.slow is not None:
            looks.append(judge_rate("slow", "slow_ratio", f"slower than {bake.slow.slow_ms:g} ms a record",
                                    _rate(bake.slow, self.alpha), ours.slow or 0.0, ours.requests,
                                    self.params.power))  # fmt: skip
        return looks


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
