"""The gate report, as JSON for machines and Markdown for a PR comment or job summary.

Deterministic: the same run gated twice gives the same bytes (no clock, no
timings, floats rounded, keys sorted).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from gates.evaluate import GateResult
from gates.policy_diff import LOOSENED, PolicyChange

COMMENT_MARKER = "<!-- gate-report -->"
DIGITS = 6


@dataclass(frozen=True)
class GateReport:
    """The gate's verdict on a run, with everything behind it, ready to be written out."""

    model_name: str
    run_id: str
    git_sha: str
    result: GateResult
    confidence: float | None
    bootstrap_samples: int
    policy_changes: list[PolicyChange] | None = None  # None: no base params given
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every rule passed."""
        return self.result.passed

    @property
    def verdict(self) -> str:
        """The verdict as recorded on the run: passed or failed."""
        return "passed" if self.passed else "failed"

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, floats rounded to DIGITS."""
        r = self.result
        baseline = r.baseline
        rounded = _rounded(
            {
                "model_name": self.model_name,
                "run_id": self.run_id,
                "git_sha": self.git_sha,
                "verdict": self.verdict,
                "confidence": self.confidence,
                "bootstrap_samples": self.bootstrap_samples,
                "metrics": {name: c.candidate for name, c in r.comparisons.items()},
                "rules": [rule.to_dict() for rule in r.rules],
                "baseline": None
                if baseline is None
                else {"version": baseline.version, "metrics": baseline.metrics, "error": baseline.error},
                "comparison": {
                    name: {
                        "candidate": c.candidate,
                        "candidate_ci": list(c.candidate_ci) if c.candidate_ci else None,
                        "production": c.production,
                        "delta": c.delta,
                        "ci_low": c.delta_ci[0] if c.delta_ci else None,
                        "ci_high": c.delta_ci[1] if c.delta_ci else None,
                    }
                    for name, c in r.comparisons.items()
                    if c.production is not None
                },
                "slices": [
                    {
                        "column": s.column,
                        "slice": s.label,
                        "rows": s.rows,
                        "candidate_f1": s.candidate,
                        "production_f1": s.production,
                        "delta": s.delta,
                        "ci_low": s.delta_ci[0] if s.delta_ci else None,
                        "ci_high": s.delta_ci[1] if s.delta_ci else None,
                        "gated": s.gated,
                    }
                    for s in r.slices
                ],
                "schema": None if r.schema is None else r.schema.to_dict(),
                "drift": None if r.drift is None else {**r.drift.to_dict(), "warnings": r.drift.warnings()},
                "policy_changes": None
                if self.policy_changes is None
                else [change.to_dict() for change in self.policy_changes],
                "notes": self.notes,
            }
        )
        return cast("dict[str, Any]", rounded)  # a dict, rounded, is a dict

    def to_json(self) -> str:
        """The report as JSON: keys sorted, one trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        """The report as Markdown for a PR comment or job summary, marked with COMMENT_MARKER."""
        r = self.result
        icon = "✅" if self.passed else "❌"
        against = f"against production v{r.baseline.version}" if r.baseline else "no production version yet"
        how = (
            f"{self.confidence:.0%} paired bootstrap intervals, {self.bootstrap_samples} resamples"
            if self.confidence is not None
            else "point estimates (gates.confidence is null)"
        )
        lines = [
            COMMENT_MARKER,
            f"## {icon} Gate {self.verdict}: `{self.model_name}`",
            "",
            f"Run `{self.run_id}` at commit `{self.git_sha[:12]}`, {against}; {how}.",
            "",
            *self._what_changed(),
            "",
            *_charts(r, self.confidence),
            "### Rules",
            "",
            "| rule | metric | threshold | value | verdict | detail |",
            "|---|---|---|---|---|---|",
        ]
        for rule in r.rules:
            lines.append(
                f"| `{rule.rule}` | {rule.metric} | {_fmt(rule.threshold)} | {_fmt(rule.value)} "
                f"| {'✅ pass' if rule.passed else '❌ fail'} | {_cell(rule.detail)} |"
            )
        lines += ["", *_metrics_table(r, self.confidence), *_slices_table(r), *_schema_section(r), *_drift_section(r)]
        lines += [f"> {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def _what_changed(self) -> list[str]:
        out = ["**What changed**", ""]
        if self.policy_changes is None:
            out.append("- gate policy: not compared (no `--base-params`)")
        elif not self.policy_changes:
            out.append("- gate policy: unchanged from the base branch")
        for change in self.policy_changes or []:
            mark = "⚠" if change.direction == LOOSENED else "ℹ"
            out.append(f"- {mark} {change.message} (`{change.key}`)")
        out += [f"- ❌ `{rule.rule}`: {rule.detail}" for rule in self.result.rules if not rule.passed]
        schema = self.result.schema
        if schema is not None and schema.breaking and self.result.rules and self.passed:
            out.append(f"- ⚠ serving schema break allowed: {'; '.join(schema.breaking)}")
        if self.result.drift is not None:
            out += [f"- ⚠ data: {warning}" for warning in self.result.drift.warnings()]
        return out


def _rounded(value: object) -> object:
    """`value` with every float in it rounded to DIGITS, tuples as lists."""
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _charts(r: GateResult, confidence: float | None) -> list[str]:
    """Mermaid charts GitHub renders: metrics and per-slice F1, candidate as bars, production as a line."""
    names = [n for n, c in r.comparisons.items() if 0 <= c.candidate <= 1]
    scored = r.baseline if r.baseline is not None and r.baseline.metrics is not None else None
    # Production scored has a value for every recomputed metric, not for a logged metric it lacks: then no line.
    production = [r.comparisons[n].production for n in names]
    line = [v for v in production if v is not None] if scored else []
    drawn = scored is not None and len(line) == len(names)
    title = f"Candidate (bars) vs production v{scored.version} (line)" if drawn and scored else "Candidate"
    out = [*_chart(title, names, [r.comparisons[n].candidate for n in names], line if drawn else None)]
    intervals = {n: ci for n in names if (ci := r.comparisons[n].delta_ci) is not None}
    deltas = list(intervals)
    if deltas:
        low = [intervals[n][0] for n in deltas]
        high = [intervals[n][1] for n in deltas]
        mid = [cast(float, r.comparisons[n].delta) for n in deltas]  # an interval comes with its delta
        bottom, top = min([*low, 0.0]), max([*high, 0.0])
        pad = max(top - bottom, 0.01) * 0.1
        out += [
            "```mermaid",
            "xychart-beta",
            f'    title "Candidate − production: lines are {confidence:.0%} CI low, Δ, CI high"',
            f"    x-axis [{', '.join(_label(n) for n in deltas)}]",
            f'    y-axis "Δ" {bottom - pad:.4f} --> {top + pad:.4f}',
            f"    line [{_values(low)}]",
            f"    line [{_values(mid)}]",
            f"    line [{_values(high)}]",
            "```",
            "",
        ]
    if r.slices:
        compared = all(s.production is not None for s in r.slices)
        out += _chart(
            "F1 per slice: candidate (bars)" + (" vs production (line)" if compared else ""),
            [s.label for s in r.slices],
            [s.candidate for s in r.slices],
            cast("list[float]", [s.production for s in r.slices]) if compared else None,
        )
    return out


def _chart(title: str, labels: Sequence[str], bars: Sequence[float], line: Sequence[float] | None) -> list[str]:
    out = [
        "```mermaid",
        "xychart-beta",
        f'    title "{title}"',
        f"    x-axis [{', '.join(_label(n) for n in labels)}]",
        '    y-axis "score" 0 --> 1',
        f"    bar [{_values(bars)}]",
    ]
    if line is not None:
        out.append(f"    line [{_values(line)}]")
    return [*out, "```", ""]


def _label(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


def _values(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _metrics_table(r: GateResult, confidence: float | None) -> list[str]:
    level = f"{confidence:.0%} CI" if confidence is not None else "CI"
    if r.baseline is None or r.baseline.metrics is None:
        note = "" if r.baseline is None else f" (production v{r.baseline.version} could not be scored)"
        out = [f"### Metrics{note}", "", f"| metric | candidate | {level} |", "|---|---|---|"]
        out += [f"| {n} | {c.candidate:.4f} | {_interval(c.candidate_ci)} |" for n, c in r.comparisons.items()]
        return [*out, ""]
    out = [
        f"### Metrics on the same rows: candidate vs production v{r.baseline.version}",
        "",
        f"| metric | candidate | {level} | production | Δ | {level} of Δ |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in r.comparisons.items():
        out.append(
            f"| {name} | {c.candidate:.4f} | {_interval(c.candidate_ci)} | {_fmt(c.production)} | {_signed(c.delta)} "
            f"| {_interval(c.delta_ci, signed=True)} |"
        )
    return [*out, ""]


def _slices_table(r: GateResult) -> list[str]:
    if not r.slices:
        return []
    out = [
        "### Slices (F1)",
        "",
        "| slice | rows | candidate | production | Δ | CI of Δ | gated |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in r.slices:
        out.append(
            f"| {_cell(s.label)} | {s.rows} | {s.candidate:.4f} | {_fmt(s.production)} | {_signed(s.delta)} "
            f"| {_interval(s.delta_ci, signed=True)} | {'yes' if s.gated else 'no'} |"
        )
    return [*out, ""]


def _schema_section(r: GateResult) -> list[str]:
    if r.schema is None:
        return []
    s = r.schema
    if not (s.removed or s.added or s.retyped or s.now_required):
        return ["### Serving schema", "", "Same input fields and types as production.", ""]
    out = ["### Serving schema", "", "| field | change | breaks clients |", "|---|---|---|"]
    out += [f"| `{name}` | removed | yes |" for name in s.removed]
    out += [f"| `{a['name']}` | added ({a['type']}, {'required' if a['required'] else 'optional'}) "
            f"| {'yes' if a['required'] else 'no'} |" for a in s.added]  # fmt: skip
    out += [f"| `{t['name']}` | {t['from']} → {t['to']} | {'yes' if t['breaking'] else 'no'} |" for t in s.retyped]
    out += [f"| `{name}` | became required | yes |" for name in s.now_required]
    return [*out, ""]


def _drift_section(r: GateResult) -> list[str]:
    if r.drift is None:
        return []
    d = r.drift
    out = ["### Training data against production's", ""]
    if d.psi:
        out += ["| numeric column | PSI |", "|---|---|"]
        out += [f"| {c} | {v:.4f} |" for c, v in d.psi.items()]
        out.append("")
    out += [f"- {w}" for w in d.warnings()] or ["No new or missing columns, unseen categories or shifts."]
    return [*out, ""]


def _interval(ci: tuple[float, float] | None, signed: bool = False) -> str:
    if ci is None:
        return "—"
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if signed else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
