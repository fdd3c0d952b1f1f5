"""What a params change does to the gates: every threshold loosened or tightened, in words.

Works on the `gates` sections as plain mappings (Params.gates.model_dump()).
A loosened gate is shown, not blocked: reviewers decide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LOOSENED, TIGHTENED, CHANGED = "loosened", "tightened", "changed"


@dataclass(frozen=True)
class PolicyChange:
    key: str
    before: Any
    after: Any
    direction: str  # loosened | tightened | changed
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def _label(metric: str) -> str:
    return {"f1": "F1", "roc_auc": "ROC AUC"}.get(metric, metric.replace("_", " "))


def _floor(key: str, what: str, before: Any, after: Any) -> PolicyChange | None:
    """A minimum: higher is tighter, null is off."""
    if before == after:
        return None
    if after is None:
        return PolicyChange(key, before, after, LOOSENED, f"removes the {what} (was {before})")
    if before is None:
        return PolicyChange(key, before, after, TIGHTENED, f"adds a {what} of {after}")
    if after < before:
        return PolicyChange(key, before, after, LOOSENED, f"lowers the {what} from {before} to {after}")
    return PolicyChange(key, before, after, TIGHTENED, f"raises the {what} from {before} to {after}")


def _ceiling(key: str, what: str, before: Any, after: Any) -> PolicyChange | None:
    """An allowance (a drop, a PSI): higher is looser, null is off."""
    if before == after:
        return None
    if after is None:
        return PolicyChange(key, before, after, LOOSENED, f"turns off the {what} (was {before})")
    if before is None:
        return PolicyChange(key, before, after, TIGHTENED, f"turns on the {what} at {after}")
    if after > before:
        return PolicyChange(key, before, after, LOOSENED, f"widens the {what} from {before} to {after}")
    return PolicyChange(key, before, after, TIGHTENED, f"narrows the {what} from {before} to {after}")


def policy_changes(base: dict, current: dict) -> list[PolicyChange]:
    """Every gate threshold that differs between the base params' gates and these, loosened first."""
    changes: list[PolicyChange | None] = []
    before_metrics, after_metrics = base.get("metrics", {}), current.get("metrics", {})
    for metric in sorted(set(before_metrics) | set(after_metrics)):
        key = f"gates.metrics.{metric}"
        old = before_metrics.get(metric) or {"min": None, "max_drop": None}
        new = after_metrics.get(metric) or {"min": None, "max_drop": None}
        changes.append(_floor(f"{key}.min", f"{_label(metric)} floor", old["min"], new["min"]))
        changes.append(
            _ceiling(
                f"{key}.max_drop", f"allowed {_label(metric)} drop against production", old["max_drop"], new["max_drop"]
            )
        )

    old_conf, new_conf = base.get("confidence"), current.get("confidence")
    if old_conf != new_conf:
        if new_conf is None:
            changes.append(
                PolicyChange(
                    "gates.confidence",
                    old_conf,
                    None,
                    LOOSENED,
                    "compares point estimates instead of confidence intervals",
                )
            )
        elif old_conf is None:
            changes.append(
                PolicyChange(
                    "gates.confidence",
                    None,
                    new_conf,
                    TIGHTENED,
                    f"compares {new_conf:.0%} confidence intervals instead of point estimates",
                )
            )
        else:
            direction = TIGHTENED if new_conf > old_conf else LOOSENED
            changes.append(
                PolicyChange(
                    "gates.confidence",
                    old_conf,
                    new_conf,
                    direction,
                    f"changes the confidence level from {old_conf} to {new_conf}",
                )
            )
    if base.get("bootstrap_samples") != current.get("bootstrap_samples"):
        changes.append(
            PolicyChange(
                "gates.bootstrap_samples",
                base.get("bootstrap_samples"),
                current.get("bootstrap_samples"),
                CHANGED,
                f"uses {current.get('bootstrap_samples')} bootstrap resamples "
                f"instead of {base.get('bootstrap_samples')}",
            )
        )

    old_slices, new_slices = base.get("slices", {}), current.get("slices", {})
    for column in sorted(set(old_slices.get("columns", [])) - set(new_slices.get("columns", []))):
        changes.append(
            PolicyChange("gates.slices.columns", column, None, LOOSENED, f"stops gating slices of {column!r}")
        )
    for column in sorted(set(new_slices.get("columns", [])) - set(old_slices.get("columns", []))):
        changes.append(PolicyChange("gates.slices.columns", None, column, TIGHTENED, f"gates slices of {column!r}"))
    changes.append(
        _ceiling(
            "gates.slices.min_rows", "smallest slice size gated", old_slices.get("min_rows"), new_slices.get("min_rows")
        )
    )
    changes.append(
        _ceiling(
            "gates.slices.max_f1_drop",
            "allowed F1 drop per slice",
            old_slices.get("max_f1_drop"),
            new_slices.get("max_f1_drop"),
        )
    )

    old_break, new_break = bool(base.get("allow_breaking_schema")), bool(current.get("allow_breaking_schema"))
    if old_break != new_break:
        changes.append(
            PolicyChange(
                "gates.allow_breaking_schema",
                old_break,
                new_break,
                LOOSENED if new_break else TIGHTENED,
                "allows input schema changes that break API clients"
                if new_break
                else "blocks input schema changes that break API clients again",
            )
        )

    old_drift, new_drift = base.get("drift", {}), current.get("drift", {})
    for name, what in (("max_psi", "PSI limit per numeric column"), ("max_unseen_share", "limit on unseen categories")):
        changes.append(_ceiling(f"gates.drift.{name}", what, old_drift.get(name), new_drift.get(name)))

    found = [c for c in changes if c is not None]
    order = {LOOSENED: 0, TIGHTENED: 1, CHANGED: 2}
    return sorted(found, key=lambda c: order[c.direction])  # stable: params order within a direction
