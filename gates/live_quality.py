"""Live quality per version, from delayed outcomes, with intervals, held to the version's gate figures.

The rows are a version's labelled predictions (gates.outcomes.join). Each
metric is a point estimate with a bootstrap percentile interval
(gates.bootstrap, the same code the gate uses).

**Repeated looks.** The check runs again every few hours on a growing log,
so a level-α test at every look would raise false alarms far more often than
α. The false-alarm budget is split (Bonferroni) over a fixed number of looks
and of rules: a `LookBudget(alpha, max_looks, tests)` gives each rule at each
look the one-sided level α / (max_looks · tests), and the live interval is
computed at the two-sided confidence whose upper bound is a one-sided bound at
that level. By the union bound, a version whose live quality is in fact
acceptable fails any rule at any of its first `max_looks` looks with
probability at most α (bootstrap intervals are approximate; the seeded
simulation in tests/unit/test_live_quality.py measures it). Looks on a
growing log are strongly correlated, so the real rate is well below α. A look
past `max_looks` is inconclusive ("budget spent"): the caller starts a new
watch with a new budget, never keeps looking on the old one. The anytime-valid
rate tests of gates.sequential do not apply: F1, precision, recall and AUC are
not rates of independent yes/no outcomes.

**Rules**, per metric, each one-sided on the live value θ:

- floor: fails when the live interval's upper bound is below `floor`
  (θ < floor is then established);
- drop: fails when the drop against the gate figure is established, a
  two-sample bound: the gate's figure was itself estimated on the test rows,
  so with d = live − gate, the upper bound of d is
  d + √(u_live² + u_gate²), u_live the live interval's upper half-width and
  u_gate the gate interval's lower half-width rescaled to the same z (0 when
  the gate recorded no interval). Fails when that bound is below −max_drop.

Otherwise a rule passes. With fewer than `min_rows` labelled rows (or a
metric undefined on them, AUC with one class) a rule is **inconclusive**: it
neither passes nor fails, and a caller treats it as "not yet", never as a
failure (no rollback, no alert; it reports the rows still missing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats

from gates.bootstrap import Comparison, HeldOutAnswers, paired_bootstrap
from gates.rules import TOLERANCE, RuleResult

DEFAULT_METRICS = ("f1", "precision", "recall", "roc_auc", "accuracy")
MIN_ROWS = 200  # fewer labelled rows than this: inconclusive
TAIL_RESAMPLES = 20  # resamples beyond each end of a percentile interval, at least (up to MAX_SAMPLES)
MAX_SAMPLES = 50_000

Outcome = Literal["passed", "failed", "inconclusive"]


@dataclass(frozen=True)
class LookBudget:
    """α for a version's whole watch, split evenly over `max_looks` looks and `tests` rules per look."""

    alpha: float
    max_looks: int
    tests: int = 1  # rules judged at each look (floor and drop of each gated metric)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or self.max_looks < 1 or self.tests < 1:
            raise ValueError(f"not a look budget: α {self.alpha}, {self.max_looks} looks, {self.tests} tests")

    @property
    def alpha_per_test(self) -> float:
        """One rule's one-sided level at one look."""
        return self.alpha / (self.max_looks * self.tests)

    @property
    def confidence(self) -> float:
        """The two-sided interval level whose upper bound is one-sided at `alpha_per_test`."""
        return 1 - 2 * self.alpha_per_test


@dataclass(frozen=True)
class LiveQuality:
    """One version's live metrics on its labelled rows, each with its interval at `confidence`."""

    rows: int
    positives: int  # rows whose actual outcome is the positive class
    confidence: float
    metrics: Mapping[str, Comparison]  # empty when there are no rows
    samples: int = 0  # bootstrap resamples drawn


@dataclass(frozen=True)
class GateFigure:
    """A metric as the gate measured it on the test rows: the point estimate and its interval."""

    value: float
    interval: tuple[float, float] | None = None
    confidence: float | None = None  # the interval's level (gates.confidence)


@dataclass(frozen=True)
class LiveCheck:
    """One live rule's verdict: passed, failed or inconclusive (not enough evidence yet), and why."""

    rule: str
    metric: str
    threshold: float | None
    value: float | None  # the bound held against the threshold
    outcome: Outcome
    detail: str

    @property
    def failed(self) -> bool:
        """Only a failure acts; inconclusive is not one."""
        return self.outcome == "failed"

    def as_rule(self) -> RuleResult:
        """As a gate RuleResult for the report: inconclusive counts as not failed, and says so."""
        detail = self.detail if self.outcome != "inconclusive" else f"inconclusive: {self.detail}"
        return RuleResult(self.rule, self.metric, self.threshold, self.value, not self.failed, detail)


@dataclass(frozen=True)
class PairedQuality:
    """Two versions on the same customers: each metric's difference (candidate − production) and its interval."""

    pairs: int  # customers both versions answered, with the same outcome
    unpaired_candidate: int  # candidate's customers production has no labelled answer for
    unpaired_production: int
    mismatched: int  # customers whose latest answers were labelled with different outcomes: left out
    confidence: float
    metrics: Mapping[str, Comparison]  # empty when there are no pairs


def answers(rows: pd.DataFrame) -> tuple[NDArray[np.bool_], HeldOutAnswers]:
    """The actual outcomes and the version's answers, from labelled rows (gates.outcomes.LABELLED_COLUMNS)."""
    actual = rows["actual"].to_numpy(dtype=bool)
    return actual, HeldOutAnswers(rows["predicted"].to_numpy(dtype=bool), rows["score"].to_numpy(dtype=float))


def one_per_customer(rows: pd.DataFrame) -> pd.DataFrame:
    """One version's labelled rows with each customer's entity-joined labels reduced to its latest row.

    An entity outcome labels the customer, not each request: a customer weighs one row in the bootstrap,
    however many predictions it asked for (roles of one version, several outcomes). Rows labelled by id stay.
    """
    if "by_entity" not in rows:
        return rows
    by_entity = rows["by_entity"].astype(bool) & rows["entity_id"].notna()
    latest = _latest_per_entity(rows[by_entity])
    return pd.concat([rows[~by_entity], latest]).sort_index()


def samples_for(confidence: float, samples: int) -> int:
    """Resamples enough for a percentile interval at `confidence`: at least TAIL_RESAMPLES in each tail.

    The look budget's confidence is high (1 - 2·0.05/60 leaves 1/1,200 in each tail): with the gate's 1,000
    resamples its bounds would be the extreme resamples themselves. Capped at MAX_SAMPLES.
    """
    tail = (1 - confidence) / 2
    needed = math.ceil(TAIL_RESAMPLES / tail) if tail > 0 else MAX_SAMPLES
    return max(samples, min(needed, MAX_SAMPLES))


def quality(
    rows: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> LiveQuality:
    """Point estimates and bootstrap intervals of `metrics` on one version's labelled rows (seeded).

    At least `samples` resamples, more when `confidence` needs them (samples_for).
    """
    actual, answered = answers(rows)
    if not len(actual):
        return LiveQuality(0, 0, confidence, {})
    drawn = samples_for(confidence, samples)
    found = paired_bootstrap(actual, answered, None, list(metrics), drawn, confidence, seed)
    return LiveQuality(len(actual), int(actual.sum()), confidence, found, drawn)


def _z(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval's upper bound."""
    return float(stats.norm.isf((1 - confidence) / 2))


def compare_with_gate(
    live: LiveQuality,
    metric: str,
    gate: GateFigure | None,
    floor: float | None,
    max_drop: float | None,
    budget: LookBudget,
    look: int,
    min_rows: int = MIN_ROWS,
) -> list[LiveCheck]:
    """The floor and drop rules of one metric at look number `look` (1-based) of the version's watch.

    `live` must have been computed at `budget.confidence` or wider (ValueError otherwise). A rule is
    left out when its threshold is None (the drop rule also without a gate figure).
    """
    if look < 1:
        raise ValueError(f"looks are numbered from 1, not {look}")
    if live.confidence < budget.confidence - TOLERANCE:
        raise ValueError(f"live intervals at {live.confidence} are narrower than the budget's {budget.confidence}")
    wanted: list[tuple[str, float]] = []
    if floor is not None:
        wanted.append((f"live_{metric}_min", floor))
    if max_drop is not None and gate is not None:
        wanted.append((f"live_{metric}_drop", -max_drop))
    comparison = live.metrics.get(metric)
    why = None
    if look > budget.max_looks:
        why = f"look {look} is past the budget of {budget.max_looks} looks: start a new watch"
    elif live.rows < min_rows:
        why = f"not enough labelled rows ({live.rows} of the {min_rows} needed)"
    elif comparison is None or comparison.candidate_ci is None or np.isnan(comparison.candidate):
        why = f"{metric} is undefined on {live.rows} labelled rows ({live.positives} positive)"
    if why is not None or comparison is None or comparison.candidate_ci is None:
        return [LiveCheck(rule, metric, threshold, None, "inconclusive", str(why)) for rule, threshold in wanted]
    point, upper = comparison.candidate, comparison.candidate_ci[1]
    shown = f"live {metric} {point:.4f} (upper bound {upper:.4f} at {live.confidence:.2%}, {live.rows} rows)"
    out = []
    for rule, threshold in wanted:
        if rule.endswith("_min") or gate is None:
            bound = upper
            failed = bound < threshold - TOLERANCE
            verdict = "is below the floor, established" if failed else "reaches the floor"
            detail = f"{shown} {verdict} {threshold}"
        else:
            bound = drop_bound(point, upper, gate, live.confidence)
            failed = bound < threshold - TOLERANCE
            verdict = "a drop is established" if failed else "no drop established"
            detail = (
                f"{shown} against the gate's {gate.value:.4f}: change {point - gate.value:+.4f}, upper bound "
                f"{bound:+.4f} {'<' if failed else '≥'} {threshold:+.4f}: {verdict}"
            )
        out.append(LiveCheck(rule, metric, threshold, round(bound, 6), "failed" if failed else "passed", detail))
    return out


def drop_bound(point: float, upper: float, gate: GateFigure, confidence: float) -> float:
    """The upper bound of live − gate: the two half-widths (the gate's rescaled to the same z) in quadrature.

    `point` and `upper`: the live estimate and its interval's upper bound at `confidence`.
    """
    gate_width = 0.0
    if gate.interval is not None and gate.confidence is not None:
        gate_width = max(gate.value - gate.interval[0], 0.0) * _z(confidence) / _z(gate.confidence)
    return float(point - gate.value + np.hypot(max(upper - point, 0.0), gate_width))


def _latest_per_entity(rows: pd.DataFrame) -> pd.DataFrame:
    """Each customer's latest labelled answer."""
    known = rows[rows["entity_id"].notna()]
    return known.sort_values(["time", "prediction_id"], kind="stable").drop_duplicates("entity_id", keep="last")


def paired(
    candidate: pd.DataFrame,
    production: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedQuality:
    """Candidate (canary or shadow) against production on the customers both answered, paired on entity_id.

    Each customer counts once: each side's latest labelled answer for it. The interval is that of the
    difference, from gates.bootstrap.paired_bootstrap: each resample draws customers, scoring both sides.
    """
    ours, theirs = _latest_per_entity(candidate), _latest_per_entity(production)
    both = ours.merge(theirs, on="entity_id", suffixes=("_c", "_p"))
    same = both["actual_c"] == both["actual_p"]
    matched = both[same]
    unpaired_c = len(ours) - len(both)
    unpaired_p = len(theirs) - len(both)
    if matched.empty:
        return PairedQuality(0, unpaired_c, unpaired_p, int((~same).sum()), confidence, {})
    y = matched["actual_c"].to_numpy(dtype=bool)
    cand = HeldOutAnswers(matched["predicted_c"].to_numpy(dtype=bool), matched["score_c"].to_numpy(dtype=float))
    prod = HeldOutAnswers(matched["predicted_p"].to_numpy(dtype=bool), matched["score_p"].to_numpy(dtype=float))
    found = paired_bootstrap(y, cand, prod, list(metrics), samples_for(confidence, samples), confidence, seed)
    return PairedQuality(len(matched), unpaired_c, unpaired_p, int((~same).sum()), confidence, found)
