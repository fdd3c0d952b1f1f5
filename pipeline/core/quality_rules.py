"""Live quality from delayed outcomes, as the pipeline judges and reports it: pure, no I/O.

- `judge_version`: one version's labelled predictions against its gate figures and the floors of
  `gates.metrics`, with `rollout.outcomes`' drop and look budget (gates/live_quality.py does the statistics);
  its `figures` are what the signed quality verdict carries.
- `judge_recorded`: a `rollout.quality` or `rollout.bake.quality` rule held to a recorded verdict's figures.
- `QualityReport`: reports/quality.json and .md.
- `training_rows`: labelled log rows shaped like the training data (`training-set`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from gates.bootstrap import METRICS
from gates.live_quality import (
    GateFigure,
    LiveCheck,
    LiveQuality,
    LookBudget,
    Outcome,
    PairedQuality,
    compare_with_gate,
    drop_bound,
)
from gates.rules import TOLERANCE
from pipeline.core.rollout_params import QualityRule

DIGITS = 6


def _r(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), DIGITS)


def gate_figures(report: Mapping[str, Any] | None, metrics: Sequence[str]) -> dict[str, GateFigure]:
    """The gate's figure of each metric from its report (gate/gate.json): the value, and its interval when recorded.

    The gate records a candidate's interval when it had a production to compare with; a first version's figure
    comes without one (its drop rule then counts the gate figure as exact, the stricter reading).
    """
    if not report:
        return {}
    values, comparison = report.get("metrics") or {}, report.get("comparison") or {}
    confidence = report.get("confidence")
    found = {}
    for metric in metrics:
        value = values.get(metric)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        ci = (comparison.get(metric) or {}).get("candidate_ci")
        if ci and isinstance(confidence, int | float):
            found[metric] = GateFigure(float(value), (float(ci[0]), float(ci[1])), float(confidence))
        else:
            found[metric] = GateFigure(float(value))
    return found


def judged_metrics(gated: Mapping[str, Any]) -> list[str]:
    """The gated metrics (gates.metrics) quality can compute live from answers and outcomes."""
    return [name for name in gated if name in METRICS]


def rule_count(metrics: Sequence[str], floors: Mapping[str, float | None], gate: Mapping[str, GateFigure],
               max_drop: float | None) -> int:  # fmt: skip
    """How many rules one look judges: each metric's floor and drop that are on (at least 1, for the budget)."""
    count = sum(floors.get(m) is not None for m in metrics)
    count += sum(max_drop is not None and m in gate for m in metrics)
    return max(count, 1)


@dataclass(frozen=True)
class VersionQuality:
    """One version's live quality, the rules it was held to and the verdict."""

    version: str
    roles: tuple[str, ...]
    live: LiveQuality
    gate: Mapping[str, GateFigure]
    checks: tuple[LiveCheck, ...]
    look: int
    max_looks: int
    paired: PairedQuality | None = None
    paired_with: str | None = None
    kept_failed: str | None = None  # when the failed verdict recorded then stands (its look budget is spent)

    @property
    def budget_spent(self) -> bool:
        """This look is past the watch's budget: it cannot judge."""
        return self.look > self.max_looks

    @property
    def verdict(self) -> Outcome:
        """Failed when a rule failed or a kept failure stands; passed when one passed; else inconclusive."""
        if self.kept_failed is not None or any(c.outcome == "failed" for c in self.checks):
            return "failed"
        if any(c.outcome == "passed" for c in self.checks):
            return "passed"
        return "inconclusive"

    @property
    def reason(self) -> str:
        """Why, in words: the failed rules, or why nothing could be judged."""
        if self.kept_failed is not None:
            return (f"the failed verdict of {self.kept_failed} stands: look {self.look} is past the budget of "
                    f"{self.max_looks} looks, so it cannot be cleared (start a new watch to judge again)")  # fmt: skip
        wanted = "failed" if self.verdict == "failed" else "inconclusive"
        details = [f"{c.rule}: {c.detail}" for c in self.checks if c.outcome == wanted]
        if self.verdict == "passed":
            return "every rule judged passed"
        return "; ".join(dict.fromkeys(details)) or "no rule is on (gates.metrics, rollout.outcomes.max_drop)"

    def figures(self, at: str, since: str | None) -> dict[str, Any]:
        """What the signed verdict carries (quality.figures): when, how many rows, each metric live and at the gate."""
        metrics = {}
        for name, comparison in self.live.metrics.items():
            gate = self.gate.get(name)
            metrics[name] = {
                "live": _r(comparison.candidate),
                "interval": None if comparison.candidate_ci is None else [_r(v) for v in comparison.candidate_ci],
                "gate": None if gate is None else _r(gate.value),
                "gate_interval": None if gate is None or gate.interval is None else [_r(v) for v in gate.interval],
                "gate_confidence": None if gate is None else gate.confidence,
            }
        paired = None
        if self.paired is not None:
            paired = {
                "with": self.paired_with,
                "pairs": self.paired.pairs,
                "delta": {n: _r(c.delta) for n, c in self.paired.metrics.items()},
                "delta_interval": {
                    n: None if c.delta_ci is None else [_r(v) for v in c.delta_ci]
                    for n, c in self.paired.metrics.items()
                },
            }
        return {
            "at": at,
            "since": since,
            "roles": list(self.roles),
            "labelled": self.live.rows,
            "positives": self.live.positives,
            "confidence": _r(self.live.confidence),
            "look": self.look,
            "max_looks": self.max_looks,
            "metrics": metrics,
            "rules": [
                {"rule": c.rule, "outcome": c.outcome, "threshold": c.threshold, "value": c.value} for c in self.checks
            ],
            "paired": paired,
        }


def judge_version(
    version: str,
    roles: Sequence[str],
    live: LiveQuality,
    gate: Mapping[str, GateFigure],
    floors: Mapping[str, float | None],
    max_drop: float | None,
    budget: LookBudget,
    look: int,
    min_rows: int,
) -> VersionQuality:
    """The floor and drop rules of every gated metric at this look (compare_with_gate of gates/live_quality.py)."""
    checks: list[LiveCheck] = []
    for metric in floors:
        checks += compare_with_gate(live, metric, gate.get(metric), floors[metric], max_drop, budget, look, min_rows)
    return VersionQuality(version, tuple(roles), live, gate, tuple(checks), look, budget.max_looks)


def keep_recorded_failure(judged: VersionQuality, recorded: str | None, recorded_at: str | None) -> VersionQuality:
    """`judged`, or, past the look budget with a recorded (verified) "failed" verdict, that failure kept.

    A spent budget makes a look inconclusive; recording that would clear the alert while watch still fails.
    """
    if not judged.budget_spent or recorded != "failed" or any(c.failed for c in judged.checks):
        return judged
    return replace(judged, kept_failed=recorded_at or "an earlier look")


@dataclass(frozen=True)
class RecordedCheck:
    """A quality rule held to a recorded verdict: failed, passed or not judged (no verdict, too few rows)."""

    outcome: Outcome
    detail: str

    @property
    def failed(self) -> bool:
        """Only a failure acts."""
        return self.outcome == "failed"


def judge_recorded(verdict: str | None, figures: Mapping[str, Any] | None, rule: QualityRule) -> RecordedCheck:
    """`rule` on a recorded verdict: fails only when the verdict is "failed" AND its figures establish a drop.

    The bound is the verdict's own: the live interval's upper bound and the gate's interval, combined as
    drop_bound of gates/live_quality.py does; it fails when below -max_drop. Fewer than `min_labelled` rows: not judged.
    The verdict is what `quality` decided within its look budget: figures it did not fail (a look past the
    budget, a rule that passed) never act, so watch and rollout never fail what the alert does not.
    """
    if not figures:
        return RecordedCheck("inconclusive", "no quality verdict recorded (or none that verifies)")
    rows = int(figures.get("labelled") or 0)
    at = figures.get("at", "?")
    look, max_looks = figures.get("look"), figures.get("max_looks")
    if isinstance(look, int) and isinstance(max_looks, int) and look > max_looks:
        return RecordedCheck("inconclusive", f"the quality verdict of {at} is look {look}, past its budget of "
                             f"{max_looks} looks: not judged")  # fmt: skip
    if rows < rule.min_labelled:
        return RecordedCheck("inconclusive", f"the quality verdict of {at} rests on {rows} labelled rows, "
                             f"fewer than the {rule.min_labelled} the rule needs")  # fmt: skip
    confidence = float(figures.get("confidence") or 0.95)
    failed, passed = [], []
    for name, metric in (figures.get("metrics") or {}).items():
        live, interval, gate = metric.get("live"), metric.get("interval"), metric.get("gate")
        if live is None or interval is None or gate is None:
            continue
        gate_interval = metric.get("gate_interval")
        figure = GateFigure(gate, tuple(gate_interval) if gate_interval else None, metric.get("gate_confidence"))
        bound = drop_bound(live, interval[1], figure, confidence)
        text = (f"live {name} {live:.4f} against the gate's {gate:.4f} on {rows} rows ({at}): upper bound of the "
                f"change {bound:+.4f}")  # fmt: skip
        if bound < -rule.max_drop - TOLERANCE:
            failed.append(f"{text} < {-rule.max_drop:+.4f}, a drop is established")
        else:
            passed.append(f"{text} ≥ {-rule.max_drop:+.4f}")
    if failed and verdict == "failed":
        return RecordedCheck("failed", "; ".join(failed))
    if failed:
        return RecordedCheck("inconclusive", f"the quality verdict of {at} is {verdict!r}, not failed: "
                             f"not acted on ({'; '.join(failed)})")  # fmt: skip
    if passed:
        return RecordedCheck("passed", "; ".join(passed))
    return RecordedCheck("inconclusive", f"the quality verdict of {at} has no metric with a gate figure to compare")


@dataclass
class QualityReport:
    """What one `quality` run found: every version judged, and the join behind it."""

    model: str
    at: str
    since: str | None
    join: dict[str, Any]  # counts of the outcomes join
    versions: list[VersionQuality] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # version -> why it was not judged

    @property
    def failed(self) -> list[VersionQuality]:
        """The versions whose verdict failed."""
        return [v for v in self.versions if v.verdict == "failed"]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "model": self.model,
            "at": self.at,
            "since": self.since,
            "join": self.join,
            "versions": {
                v.version: {"verdict": v.verdict, "reason": v.reason, **v.figures(self.at, self.since)}
                for v in self.versions
            },
            "skipped": self.skipped,
        }

    def to_json(self) -> str:
        """The report as JSON: keys sorted, one trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        """The report as Markdown for the job summary."""
        icon = "❌" if self.failed else "✅"
        verdict = "failed" if self.failed else "no rule failed"
        lines = [
            f"## {icon} Live quality {verdict}: `{self.model}`",
            "",
            f"Outcomes joined to the prediction log at {self.at}"
            + (f", predictions since {self.since}" if self.since else "")
            + ".",
            "",
            "| join | |",
            "|---|---|",
            *[f"| {k.replace('_', ' ')} | {v} |" for k, v in self.join.items()],
            "",
            "| version | roles | labelled | metric | live [interval] | gate | verdict | why |",
            "|---|---|---|---|---|---|---|---|",
        ]
        icons = {"passed": "✅ passed", "failed": "❌ failed", "inconclusive": "⏳ inconclusive"}
        for v in self.versions:
            for name, c in v.live.metrics.items() or {"-": None}.items():
                gate = v.gate.get(name)
                shown = "-" if c is None else f"{c.candidate:.4f}" + (
                    f" [{c.candidate_ci[0]:.4f}, {c.candidate_ci[1]:.4f}]" if c.candidate_ci else "")  # fmt: skip
                lines.append(
                    f"| {v.version} | {', '.join(v.roles)} | {v.live.rows} | {name} | {shown} | "
                    f"{'-' if gate is None else f'{gate.value:.4f}'} | {icons[v.verdict]} | "
                    f"{v.reason.replace('|', '/')} |"
                )
            if v.paired is not None and v.paired.metrics:
                deltas = ", ".join(
                    f"{n} {c.delta:+.4f}" + (f" [{c.delta_ci[0]:+.4f}, {c.delta_ci[1]:+.4f}]" if c.delta_ci else "")
                    for n, c in v.paired.metrics.items() if c.delta is not None
                )  # fmt: skip
                lines.append(f"| {v.version} | paired with v{v.paired_with} | {v.paired.pairs} customers | "
                             f"{deltas} | | | | shown, not a rule |")  # fmt: skip
        lines += ["", *[f"> v{version} not judged: {why}" for version, why in self.skipped.items()]]
        return "\n".join(lines).rstrip() + "\n"


@dataclass(frozen=True)
class TrainingRows:
    """Labelled log rows shaped like the training data, and what was left out."""

    frame: pd.DataFrame
    from_feature_store: int  # features were a feature store reference: the values are the store's, not here
    shadow: int  # a shadow's answer is a copy of production's request: counted once, as production's
    unreadable: int  # features that are not a JSON object
    repeated: int = 0  # earlier labelled answers to a customer already in (one row per customer: its latest)


def training_rows(
    labelled: pd.DataFrame,
    features: Mapping[str, Any],
    columns: Sequence[str],
    target: str,
    labels: tuple[str, str],
    id_column: str | None,
) -> TrainingRows:
    """One row per labelled customer (LABELLED_COLUMNS), its features from the log's JSON, the target its outcome.

    A customer (entity_id) gives one row, its latest labelled answer: whatever a client sends for one id, it
    weighs one row. Answers without an entity each give a row.

    `features`: prediction_id -> the log's features text. `labels`: (positive, negative) as the data writes them.
    The id column, when the features lack it, is the prediction's entity (else its id). Features the data does
    not have are dropped; a data column the features lack is left empty.
    """
    positive, negative = labels
    rows, stored, unreadable = [], 0, 0
    shadows = (labelled["role"] == "shadow").to_numpy(dtype=bool)
    shadow, kept = int(shadows.sum()), labelled[~shadows]
    if "time" in kept:
        kept = kept.sort_values(["time", "prediction_id"], kind="stable")
    earlier = kept["entity_id"].notna() & kept["entity_id"].duplicated(keep="last")
    repeated, kept = int(earlier.sum()), kept[~earlier].sort_index()
    for pid, entity, actual in zip(kept["prediction_id"], kept["entity_id"], kept["actual"], strict=True):
        try:
            values = json.loads(features.get(pid) or "")
        except ValueError:
            values = None
        if not isinstance(values, dict):
            unreadable += 1
            continue
        if "feature_service" in values:
            stored += 1
            continue
        row = {name: values.get(name) for name in columns if name != target}
        if id_column is not None and row.get(id_column) is None:
            row[id_column] = entity if isinstance(entity, str) else pid
        row[target] = positive if actual else negative
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(columns))
    return TrainingRows(frame, stored, shadow, unreadable, repeated)
