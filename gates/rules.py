"""Gate rules: plain functions over comparisons, slices, schema and drift, each returning a verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gates.bootstrap import Comparison
from gates.profile import Drift
from gates.schema_diff import SchemaDiff

TOLERANCE = 1e-12  # float noise never decides a verdict


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict: the value it held against the threshold, and why, in words."""

    rule: str
    metric: str
    threshold: float | None  # the bound the value is held to
    value: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain data for the report."""
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """The production version the candidate is compared with, on the same test rows."""

    version: str
    metrics: dict[str, float] | None  # None when production could not be scored
    error: str | None = None


@dataclass(frozen=True)
class SliceResult:
    """The candidate's F1 on one slice, against production's on the same rows."""

    column: str
    label: str
    rows: int
    candidate: float  # F1 on the slice
    production: float | None = None
    delta: float | None = None
    delta_ci: tuple[float, float] | None = None
    gated: bool = False  # False: too small, or nothing to compare with

    @property
    def bound(self) -> float | None:
        """What the rule holds against the margin: the CI's lower bound, or the delta without a CI."""
        return self.delta_ci[0] if self.delta_ci else self.delta


def _ci(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:+.4f}, {interval[1]:+.4f}]"


def metric_floor(comparison: Comparison, minimum: float) -> RuleResult:
    """The candidate's value (point estimate) must reach `minimum`; its CI is reported beside it."""
    name, value = comparison.metric, comparison.candidate
    passed = value >= minimum - TOLERANCE
    ci = comparison.candidate_ci
    shown = "" if ci is None else f" (CI {ci[0]:.4f}–{ci[1]:.4f})"
    verdict = "reaches" if passed else "is below"
    return RuleResult(
        f"{name}_min",
        name,
        minimum,
        round(value, 6),
        passed,
        f"{name} {value:.4f}{shown} {verdict} the minimum {minimum}",
    )


def non_inferiority(
    comparison: Comparison | None, baseline: Baseline | None, max_drop: float, confidence: float | None
) -> RuleResult:
    """The candidate may be worse than production by at most `max_drop`, judged on the CI's lower bound.

    A negative `max_drop` asks for a gain: the lower bound must reach +|max_drop| (a candidate identical to
    production, whose interval is [0, 0], does not).
    """
    name = comparison.metric if comparison else "f1"
    rule = f"max_{name}_drop"
    if baseline is None:
        return RuleResult(rule, name, -max_drop, None, True, "no production version yet: nothing to compare")
    if baseline.metrics is None or comparison is None or comparison.delta is None:
        why = baseline.error or f"production v{baseline.version} has no {name}"
        return RuleResult(
            rule, name, -max_drop, None, False, f"production v{baseline.version} could not be compared: {why}"
        )
    delta, ci = comparison.delta, comparison.delta_ci
    bound = ci[0] if ci is not None else delta
    passed = bound >= -max_drop - TOLERANCE
    how = f"{confidence:.0%} CI lower bound {bound:+.4f}" if ci is not None else f"change {delta:+.4f}"
    return RuleResult(
        rule,
        name,
        -max_drop,
        round(bound, 6),
        passed,
        f"{name} {comparison.candidate:.4f} vs production v{baseline.version} {comparison.production:.4f}: "
        f"change {delta:+.4f}{_ci(ci)}; {how} {'≥' if passed else '<'} {_margin(max_drop)}",
    )


def _margin(max_drop: float) -> str:
    """The bound a rule holds the CI's lower bound to: −drop tolerated, or +gain required (negative max_drop)."""
    return f"+{-max_drop}" if max_drop < 0 else f"−{max_drop}"


def slice_rule(column: str, results: list[SliceResult], max_drop: float, min_rows: int) -> RuleResult:
    """No gated slice of `column` may lose more than `max_drop` F1 (CI lower bound) against production."""
    gated = [(r, bound) for r in results if r.gated and (bound := r.bound) is not None]
    rule = f"slice_f1_drop[{column}]"
    if not gated:
        why = "no production to compare with" if all(r.production is None for r in results) else ""
        why = why or f"no slice has {min_rows} rows"
        return RuleResult(rule, "f1", -max_drop, None, True, f"{len(results)} slice(s), none gated: {why}")
    worst, lowest = min(gated, key=lambda pair: pair[1])
    failing = [r for r, bound in gated if bound < -max_drop - TOLERANCE]
    if failing:
        named = "; ".join(f"{r.label}: {r.candidate:.4f} vs {r.production:.4f}{_ci(r.delta_ci)}" for r in failing)
        detail = f"{len(failing)} slice(s) lose more than {max_drop} F1: {named}"
    else:
        detail = f"{len(gated)} slice(s) gated, worst {worst.label} at {lowest:+.4f}"
    return RuleResult(rule, "f1", -max_drop, round(lowest, 6), not failing, detail)


def schema_rule(diff: SchemaDiff | None, production_version: str | None, allowed: bool) -> RuleResult:
    """A change that breaks clients of the API fails, unless gates.allow_breaking_schema."""
    if diff is None:
        return RuleResult("serving_schema", "schema", None, None, True, "no production schema to compare with")
    breaking = diff.breaking
    if not breaking:
        added = ", ".join(a["name"] for a in diff.added)
        return RuleResult(
            "serving_schema",
            "schema",
            None,
            0,
            True,
            f"compatible with production v{production_version}" + (f" (adds optional {added})" if added else ""),
        )
    listed = "; ".join(breaking)
    if allowed:
        detail = f"breaking change ALLOWED by gates.allow_breaking_schema: {listed}"
    else:
        detail = f"breaks clients of production v{production_version}: {listed}"
    return RuleResult("serving_schema", "schema", None, len(breaking), allowed, detail)


def drift_rules(drift: Drift | None, max_psi: float | None, max_unseen_share: float | None) -> list[RuleResult]:
    """Profile changes that params turned into rules."""
    out: list[RuleResult] = []
    if max_psi is not None:
        if drift is None or not drift.psi:
            out.append(RuleResult("max_psi", "psi", max_psi, None, True, "no production profile to compare with"))
        else:
            column, worst = max(drift.psi.items(), key=lambda kv: kv[1])
            over = [f"{c} {v:.3f}" for c, v in drift.psi.items() if v > max_psi]
            detail = f"over the limit: {', '.join(over)}" if over else f"largest {column} {worst:.3f}"
            out.append(RuleResult("max_psi", "psi", max_psi, round(worst, 6), not over, detail))
    if max_unseen_share is not None:
        shares = {c: sum(v.values()) for c, v in (drift.unseen_categories if drift else {}).items()}
        worst_column, worst = max(shares.items(), key=lambda kv: kv[1], default=("", 0.0))
        over = [f"{c} {s:.1%}" for c, s in shares.items() if s > max_unseen_share]
        detail = f"over the limit: {', '.join(over)}" if over else "within the limit"
        if worst_column and not over:
            detail = f"largest {worst_column} {worst:.1%}"
        out.append(RuleResult("max_unseen_share", "categories", max_unseen_share, round(worst, 6), not over, detail))
    return out
