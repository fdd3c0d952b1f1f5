"""The gate report, as JSON for machines and Markdown for a PR comment or job summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from gates.rules import Baseline, RuleResult

METRICS = ("f1", "precision", "recall", "roc_auc", "accuracy")
COMMENT_MARKER = "<!-- gate-report -->"


@dataclass(frozen=True)
class GateReport:
    model_name: str
    run_id: str
    git_sha: str
    metrics: dict[str, float]
    rules: list[RuleResult]
    baseline: Baseline | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(rule.passed for rule in self.rules)

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "failed"

    def to_dict(self) -> dict:
        return {
            "model_name": self.model_name,
            "run_id": self.run_id,
            "git_sha": self.git_sha,
            "verdict": self.verdict,
            "metrics": self.metrics,
            "rules": [rule.to_dict() for rule in self.rules],
            "baseline": None
            if self.baseline is None
            else {"version": self.baseline.version, "metrics": self.baseline.metrics, "error": self.baseline.error},
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_markdown(self) -> str:
        icon = "✅" if self.passed else "❌"
        lines = [
            COMMENT_MARKER,
            f"## {icon} Gate {self.verdict}: `{self.model_name}`",
            "",
            f"Run `{self.run_id}` at commit `{self.git_sha[:12]}`.",
            "",
            "| rule | metric | threshold | value | verdict | detail |",
            "|---|---|---|---|---|---|",
        ]
        for rule in self.rules:
            lines.append(
                f"| `{rule.rule}` | {rule.metric} | {_fmt(rule.threshold)} | {_fmt(rule.value)} "
                f"| {'✅ pass' if rule.passed else '❌ fail'} | {rule.detail} |"
            )
        lines += ["", _metrics_table(self.metrics, self.baseline)]
        lines += [f"> {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _metrics_table(metrics: dict[str, float], baseline: Baseline | None) -> str:
    scored = baseline is not None and baseline.metrics is not None
    if scored:
        header = f"| metric | candidate | production v{baseline.version} | change |\n|---|---|---|---|"
    else:
        note = "" if baseline is None else f" (production v{baseline.version} could not be scored)"
        header = f"| metric | candidate{note} |\n|---|---|"
    rows = []
    for name in METRICS:
        if name not in metrics:
            continue
        if scored:
            before = baseline.metrics.get(name)
            change = "" if before is None else f"{metrics[name] - before:+.4f}"
            rows.append(f"| {name} | {metrics[name]:.4f} | {_fmt(before)} | {change} |")
        else:
            rows.append(f"| {name} | {metrics[name]:.4f} |")
    return "\n".join([header, *rows])


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
