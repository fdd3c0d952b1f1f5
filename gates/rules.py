"""Gate rules: plain functions over metrics and params returning a verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RuleResult:
    rule: str
    metric: str
    threshold: float | None  # the bound the value is held to
    value: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """The production version the candidate is compared with, on the same test set."""

    version: str
    metrics: dict[str, float] | None  # None when production could not be scored
    error: str | None = None


def f1_minimum(metrics: dict[str, float], f1_min: float) -> RuleResult:
    """The candidate's F1 must reach `f1_min`."""
    f1 = metrics["f1"]
    passed = f1 >= f1_min
    verdict = "reaches" if passed else "is below"
    return RuleResult("f1_min", "f1", f1_min, f1, passed, f"f1 {f1:.4f} {verdict} the minimum {f1_min:.4f}")


def champion_challenger(metrics: dict[str, float], baseline: Baseline | None, max_f1_drop: float | None) -> RuleResult:
    """The candidate may be worse than production by at most `max_f1_drop` F1."""
    if max_f1_drop is None:
        return RuleResult("max_f1_drop", "f1", None, None, True, "comparison disabled (gates.max_f1_drop is null)")
    if baseline is None:
        return RuleResult(
            "max_f1_drop", "f1", -max_f1_drop, None, True, "no production version yet: nothing to compare"
        )
    if baseline.metrics is None:
        return RuleResult(
            "max_f1_drop",
            "f1",
            -max_f1_drop,
            None,
            False,
            f"production version {baseline.version} could not be scored on this test set: {baseline.error}",
        )
    change = metrics["f1"] - baseline.metrics["f1"]
    passed = change >= -max_f1_drop - 1e-12
    return RuleResult(
        "max_f1_drop",
        "f1",
        -max_f1_drop,
        round(change, 6),
        passed,
        f"f1 {metrics['f1']:.4f} vs production v{baseline.version} {baseline.metrics['f1']:.4f}: "
        f"change {change:+.4f}, allowed drop {max_f1_drop:.4f}",
    )


def evaluate_gates(
    metrics: dict[str, float], baseline: Baseline | None, f1_min: float, max_f1_drop: float | None
) -> list[RuleResult]:
    """Every rule, in the order the report shows them."""
    return [f1_minimum(metrics, f1_min), champion_challenger(metrics, baseline, max_f1_drop)]
