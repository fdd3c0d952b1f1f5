"""The recent-outcomes gate: candidate and production on the prediction log's newest labelled rows.

Pure. `split_newest` picks the rows: `training-set` trains on the rest and the
gate judges the newest, so a candidate is never judged on what it was trained
on. `recent_outcomes_rule` holds the paired comparison on them to the same
margin rule as gates.metrics' max_drop (rules.non_inferiority).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from gates.bootstrap import Comparison, HeldOutAnswers, paired_bootstrap
from gates.evaluate import Production
from gates.rules import Baseline, RuleResult, non_inferiority

RULE = "recent_outcomes"


@dataclass(frozen=True, eq=False)
class Split:
    """The labelled predictions split for the rule: the newest (judged) and the rest (trainable)."""

    newest: pd.DataFrame
    rest: pd.DataFrame
    same_entities: int  # earlier answers to the newest rows' customers, left out of `rest` too


@dataclass(frozen=True)
class Skipped:
    """Newest rows the models could not be scored on, by reason."""

    feature_store: int = 0  # features logged as a feature store reference: their values are not in the log
    unreadable: int = 0  # logged features not a JSON object

    def words(self) -> str:
        """The skipped rows in words, with a leading '; ', or ''."""
        parts = []
        if self.feature_store:
            parts.append(f"{self.feature_store} with a feature store reference for features")
        if self.unreadable:
            parts.append(f"{self.unreadable} with unreadable logged features")
        return f"; skipped {', '.join(parts)}" if parts else ""


def split_newest(labelled: pd.DataFrame, rows: int) -> Split:
    """The newest `rows` labelled predictions (by time, then id) and the rest.

    Shadow answers are never among the newest: they copy production's requests. The rest also loses every
    answer to a customer (entity_id) among the newest, so a customer judged is not trained on through an
    earlier request.
    """
    ordered = labelled.sort_values(["time", "prediction_id"], kind="stable")
    newest = ordered[ordered["role"] != "shadow"].tail(rows)
    others = ordered.drop(index=newest.index)
    same = others["entity_id"].isin(set(newest["entity_id"].dropna())).fillna(False).astype(bool)
    return Split(newest.reset_index(drop=True), others[~same].reset_index(drop=True), int(same.sum()))


def recent_outcomes_rule(
    metric: str,
    comparison: Comparison | None,
    baseline: Baseline | None,
    rows: int,
    min_rows: int,
    max_drop: float,
    confidence: float | None,
    skipped: Skipped = Skipped(),
) -> RuleResult:
    """`metric` on the `rows` newest labelled rows: the candidate may trail production by at most `max_drop`.

    Judged on the paired CI's lower bound, as non_inferiority judges the test rows; with fewer than `min_rows`
    rows it is not judged, and passes saying so.
    """
    if rows < min_rows:
        why = f"not judged ({rows} rows < {min_rows})"
        return RuleResult(RULE, metric, -max_drop, None, True, f"{why}{skipped.words()}")
    judged = non_inferiority(comparison, baseline, max_drop, confidence)
    detail = f"on the newest {rows} labelled rows: {judged.detail}{skipped.words()}"
    return dataclasses.replace(judged, rule=RULE, metric=metric, detail=detail)


def judge(
    metric: str,
    y_true: NDArray[np.bool_],
    candidate: HeldOutAnswers,
    production: Production | None,
    limits: tuple[int, float],
    bootstrap: tuple[int, float | None, int],
    skipped: Skipped = Skipped(),
) -> RuleResult:
    """The rule on the newest rows' outcomes and both models' answers on them, with the gate's paired bootstrap.

    `limits`: (min_rows, max_drop); `bootstrap`: (samples, confidence, seed), as the gate's own rules use.
    """
    (min_rows, max_drop), (samples, confidence, seed) = limits, bootstrap
    rows = len(y_true)
    if rows < min_rows:
        return recent_outcomes_rule(metric, None, None, rows, min_rows, max_drop, confidence, skipped)
    scored = production.scored if production else None
    comparison = paired_bootstrap(y_true, candidate, scored, [metric], samples, confidence, seed)[metric]
    baseline = None
    if production is not None:
        figures = None if scored is None else {metric: cast(float, comparison.production)}
        baseline = Baseline(production.version, figures, production.error)
    return recent_outcomes_rule(metric, comparison, baseline, rows, min_rows, max_drop, confidence, skipped)


def unscorable(metric: str, max_drop: float, rows: int, reason: str) -> RuleResult:
    """The candidate cannot answer the newest rows (a column the log lacks, a class it never predicts): it fails."""
    return RuleResult(RULE, metric, -max_drop, None, False, f"the candidate cannot be scored on the newest {rows} "
                      f"labelled rows: {reason}")  # fmt: skip
