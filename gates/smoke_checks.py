"""Smoke checks: pure verdicts over what a served model answered."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

PROBABILITY_TOLERANCE = 1e-9


class ExpectedAnswers(TypedDict):
    """What the model answered at training time (the run's smoke examples): labels, positive-class probabilities."""

    predictions: list[str]
    probabilities: list[float]


@dataclass(frozen=True)
class Check:
    """One smoke check's verdict, with what was seen."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class SmokeReport:
    """Every smoke check run against one served version."""

    version: str
    target: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when there was at least one check and every check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def summary(self) -> str:
        """The failed checks in one line, or how many passed."""
        failed = [c for c in self.checks if not c.passed]
        if not failed:
            return f"{len(self.checks)} checks passed"
        return "; ".join(f"{c.name}: {c.detail}" for c in failed)

    def to_markdown(self) -> str:
        """The report as Markdown for a job summary: the verdict, then one table row per check."""
        icon = "✅" if self.passed else "❌"
        lines = [
            f"## {icon} Smoke {'passed' if self.passed else 'failed'}: version {self.version}",
            "",
            f"Target: `{self.target}`",
            "",
            "| check | verdict | detail |",
            "|---|---|---|",
        ]
        lines += [f"| {c.name} | {'✅' if c.passed else '❌'} | {c.detail} |" for c in self.checks]
        return "\n".join(lines) + "\n"


def predictions_match(
    expected: ExpectedAnswers, predictions: Sequence[object], probabilities: Sequence[float] | None
) -> Check:
    """Labels must be identical and probabilities equal within float noise."""
    want = [str(p) for p in expected["predictions"]]
    got = [str(p) for p in predictions]
    if len(got) != len(want):
        return Check("predictions", False, f"expected {len(want)} predictions, got {len(got)}")
    wrong = [i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b]
    if wrong:
        i = wrong[0]
        return Check(
            "predictions",
            False,
            f"{len(wrong)} of {len(want)} labels differ; first at record {i}: expected {want[i]!r}, got {got[i]!r}",
        )
    if probabilities is not None and expected.get("probabilities") is not None:
        off = [
            i
            for i, (a, b) in enumerate(zip(expected["probabilities"], probabilities, strict=True))
            if not math.isclose(float(a), float(b), rel_tol=0, abs_tol=PROBABILITY_TOLERANCE)
        ]
        if off:
            i = off[0]
            return Check(
                "predictions",
                False,
                f"{len(off)} probabilities differ; first at record {i}: "
                f"expected {expected['probabilities'][i]}, got {probabilities[i]}",
            )
    return Check("predictions", True, f"{len(want)} stored examples answered exactly as at training time")


def version_matches(expected: str, reported: object) -> Check:
    """The API must report the version it was asked to serve."""
    passed = str(reported) == str(expected)
    return Check("model version", passed, f"/model reports version {reported}, expected {expected}")


def digest_matches(expected: str, reported: object) -> Check:
    """The API must have loaded byte for byte the artifact the registry holds for the version."""
    passed = reported == expected
    return Check("artifact digest", passed, f"/model reports {reported}, registry artifact is {expected}")


def rejects_bad_input(status: int, what: str) -> Check:
    """A bad request (`what`) must get a 4xx status."""
    passed = 400 <= status < 500
    return Check(f"rejects {what}", passed, f"answered {status}, expected a 4xx")


def latency_within(samples_ms: list[float], budget_ms: float, quantile: float = 0.95) -> Check:
    """The `quantile` of single-record latencies must stay within the budget."""
    if not samples_ms:
        return Check("latency", False, "no latency samples")
    ordered = sorted(samples_ms)
    value = ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]
    passed = value <= budget_ms
    return Check(
        "latency",
        passed,
        f"p{int(quantile * 100)} {value:.1f} ms over {len(ordered)} requests, budget {budget_ms:.0f} ms",
    )
