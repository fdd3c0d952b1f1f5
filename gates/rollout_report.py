"""The rollout report, in the gate report's style: each phase, each rule with its value and threshold, the verdict.

`reports/rollout.json` for tools and `rollout.md` for the job summary; the
same for the bake (`reports/watch.json`, `watch.md`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gates.rules import RuleResult


@dataclass
class Phase:
    """One phase of a rollout (shadow, a canary step) or the bake: what it saw and how its rules went."""

    name: str
    mode: str  # shadow | canary | bake
    weight: int  # percent of traffic the new version answered (0 in shadow)
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)  # requests and the like, per version
    rules: list[RuleResult] = field(default_factory=list)
    note: str = ""  # why the phase ended without a verdict on its rules (a timeout, an interruption)
    judged: bool = False  # its rules were judged on its window (all of them may be off)

    @property
    def passed(self) -> bool:
        """The phase was judged and every rule held (a phase whose rules are all off passes once judged)."""
        return self.judged and all(rule.passed for rule in self.rules) and not self.note

    def to_dict(self) -> dict[str, Any]:
        """The phase as plain data."""
        return {
            "name": self.name,
            "mode": self.mode,
            "weight": self.weight,
            "seconds": round(self.seconds, 1),
            "figures": self.figures,
            "rules": [rule.to_dict() for rule in self.rules],
            "passed": self.passed,
            "note": self.note,
        }


@dataclass
class RolloutReport:
    """A rollout (or a bake) of one version against production: its phases and its verdict."""

    kind: str  # rollout | watch
    model: str
    version: str
    production: str | None  # the version production served when it began
    source: str  # where the metrics came from
    phases: list[Phase] = field(default_factory=list)
    verdict: str = "pending"  # passed | aborted (rollout); passed | rolled back | not judged (watch)
    reason: str = ""
    rollout: str = ""  # the rollout's id (its ledger entries and signed traffic states name it); "" for a bake

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data."""
        return {
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            "production": self.production,
            "metrics_source": self.source,
            "verdict": self.verdict,
            "reason": self.reason,
            "rollout": self.rollout,
            "phases": [phase.to_dict() for phase in self.phases],
        }

    def to_json(self) -> str:
        """The report as JSON (sorted keys, for diffs)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_markdown(self) -> str:
        """The report for a job summary: the verdict first, a picture of the phases, then each phase's rules."""
        mark = "✅" if self.verdict == "passed" else "❌" if self.verdict in ("aborted", "rolled back") else "⏸"
        title = "Rollout" if self.kind == "rollout" else "Bake"
        lines = [
            f"## {mark} {title} of `{self.model}` version {self.version}: {self.verdict}",
            "",
            f"Production was {self.production or 'nothing'}; metrics from {self.source}."
            + (f" Rollout id `{self.rollout}`." if self.rollout else ""),
        ]
        if self.reason:
            lines += ["", f"> {self.reason}"]
        if self.phases:
            lines += ["", "```mermaid", "flowchart LR"]
            for i, phase in enumerate(self.phases):
                state = "passed" if phase.passed else "failed"
                label = f"{phase.name}<br/>{phase.weight} %" if phase.mode == "canary" else phase.name
                lines.append(f'  p{i}["{label}<br/>{state}"]' + (f" --> p{i + 1}" if i + 1 < len(self.phases) else ""))
            lines += ["```"]
        for phase in self.phases:
            lines += ["", f"### {phase.name} ({phase.seconds:.0f} s)", ""]
            if phase.figures:
                lines += ["- " + ", ".join(f"{k}: {v}" for k, v in phase.figures.items()), ""]
            if phase.note:
                lines += [f"> {phase.note}", ""]
            if phase.rules:
                lines += ["| rule | value | threshold | verdict | detail |", "|---|---|---|---|---|"]
                lines += [
                    f"| {r.rule} | {_num(r.value)} | {_num(r.threshold)} | {'pass' if r.passed else '**FAIL**'} "
                    f"| {r.detail} |"
                    for r in phase.rules
                ]
        return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
