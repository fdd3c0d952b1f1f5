"""Every gate on one candidate: metrics with paired intervals, slices, the serving schema, drift.

Pure: the models' answers on the test rows, the schema diff and the drift come
in already computed; nothing here reads the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from gates.bootstrap import METRICS, Comparison, HeldOutAnswers, paired_bootstrap
from gates.profile import Drift
from gates.rules import (
    Baseline,
    RuleResult,
    SliceResult,
    drift_rules,
    metric_floor,
    non_inferiority,
    schema_rule,
    slice_rule,
)
from gates.schema_diff import SchemaDiff
from gates.slices import slices_of


class MetricSettings(Protocol):
    """A gated metric's thresholds (pipeline.core.config.MetricGate is one)."""

    @property
    def min(self) -> float | None:
        """The value the candidate must reach; None: no floor."""

    @property
    def max_drop(self) -> float | None:
        """How much worse than production the candidate may be; None: not compared."""


class SliceSettings(Protocol):
    """Which slices are gated and how (pipeline.core.config.SliceGates is one)."""

    @property
    def columns(self) -> Sequence[str]:
        """The columns whose slices are gated."""

    @property
    def min_rows(self) -> int:
        """The smallest slice gated; smaller ones are shown only."""

    @property
    def max_f1_drop(self) -> float:
        """How much F1 a gated slice may lose against production."""


class DriftSettings(Protocol):
    """The profile changes that are rules, not warnings (pipeline.core.config.DriftGates is one)."""

    @property
    def max_psi(self) -> float | None:
        """The PSI limit per numeric column; None: warn only."""

    @property
    def max_unseen_share(self) -> float | None:
        """The limit on rows with categories production never saw; None: warn only."""


class GateSettings(Protocol):
    """The gates a candidate must pass (pipeline.core.config.GateParams is one)."""

    @property
    def confidence(self) -> float | None:
        """The level of the paired bootstrap intervals; None: compare point estimates."""

    @property
    def bootstrap_samples(self) -> int:
        """How many resamples the intervals are computed from."""

    @property
    def metrics(self) -> Mapping[str, MetricSettings]:
        """The gated metrics, by name."""

    @property
    def slices(self) -> SliceSettings:
        """The slice gates."""

    @property
    def allow_breaking_schema(self) -> bool:
        """Whether a serving schema change that breaks clients may pass."""

    @property
    def drift(self) -> DriftSettings:
        """The data drift gates."""


@dataclass(frozen=True)
class Production:
    """Production as the gate sees it: its answers on the candidate's test rows, if it could give them."""

    version: str
    scored: HeldOutAnswers | None
    error: str | None = None
    logged: dict[str, float] | None = None  # metrics recorded on the version (for metrics not recomputed)


@dataclass(frozen=True)
class GateResult:
    """Every rule's verdict on one candidate, with the comparisons, slices, schema diff and drift behind them."""

    rules: list[RuleResult]
    comparisons: dict[str, Comparison]
    slices: list[SliceResult]
    schema: SchemaDiff | None
    drift: Drift | None
    baseline: Baseline | None

    @property
    def passed(self) -> bool:
        """True when every rule passed."""
        return all(rule.passed for rule in self.rules)


def evaluate(
    gates: GateSettings,
    seed: int,
    y_true: NDArray[np.bool_],
    frame: pd.DataFrame,
    candidate: HeldOutAnswers,
    logged: dict[str, float],
    production: Production | None,
    schema: SchemaDiff | None = None,
    drift: Drift | None = None,
) -> GateResult:
    """Score every rule of `gates` (GateParams) on the candidate's test rows."""
    prod_scored = production.scored if production else None
    recomputed = paired_bootstrap(
        y_true, candidate, prod_scored, list(METRICS), gates.bootstrap_samples, gates.confidence, seed
    )
    comparisons = dict(recomputed)
    for name in gates.metrics:
        if name not in comparisons:  # a logged metric the gate cannot recompute: logged values, no interval
            before = (production.logged or {}).get(name) if production else None
            delta = None if before is None else logged[name] - before
            comparisons[name] = Comparison(name, logged[name], None, before, delta, None)

    baseline = None
    if production is not None:
        # Bootstrapped with production's answers, every comparison has production's value.
        metrics = None if prod_scored is None else {k: cast(float, c.production) for k, c in recomputed.items()}
        baseline = Baseline(production.version, metrics, production.error)

    rules: list[RuleResult] = []
    for name, gate in gates.metrics.items():
        if gate.min is not None:
            rules.append(metric_floor(comparisons[name], gate.min))
        if gate.max_drop is not None:
            rules.append(non_inferiority(comparisons[name], baseline, gate.max_drop, gates.confidence))

    slices: list[SliceResult] = []
    for column in gates.slices.columns:
        results = [
            _slice_result(s.column, s.label, s.rows, y_true, candidate, prod_scored, gates, seed)
            for s in slices_of(frame, column)
        ]
        slices += results
        rules.append(slice_rule(column, results, gates.slices.max_f1_drop, gates.slices.min_rows))

    rules.append(schema_rule(schema, production.version if production else None, gates.allow_breaking_schema))
    rules += drift_rules(drift, gates.drift.max_psi, gates.drift.max_unseen_share)
    return GateResult(rules, comparisons, slices, schema, drift, baseline)


def _slice_result(
    column: str,
    label: str,
    rows: NDArray[np.bool_],
    y_true: NDArray[np.bool_],
    candidate: HeldOutAnswers,
    production: HeldOutAnswers | None,
    gates: GateSettings,
    seed: int,
) -> SliceResult:
    """The candidate's F1 on one slice against production's, gated when big enough and compared."""
    f1 = paired_bootstrap(y_true, candidate, production, ["f1"], gates.bootstrap_samples, gates.confidence, seed, rows)
    c = f1["f1"]
    count = int(rows.sum())
    gated = production is not None and count >= gates.slices.min_rows
    return SliceResult(column, label, count, c.candidate, c.production, c.delta, c.delta_ci, gated)
