"""What a params change does to the gates: every threshold loosened or tightened, in words.

Works on the `gates` sections as plain mappings (Params.gates.model_dump()).
A loosened gate is shown, not blocked: reviewers decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

LOOSENED, TIGHTENED, CHANGED = "loosened", "tightened", "changed"


@dataclass(frozen=True)
class PolicyChange:
    """One gate setting that differs from the base params, and what that does, in words."""

    key: str
    before: Any
    after: Any
    direction: str  # loosened | tightened | changed
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The change as plain data for the report."""
        return asdict(self)


def _label(metric: str) -> str:
    return {"f1": "F1", "roc_auc": "ROC AUC"}.get(metric, metric.replace("_", " "))


# How a threshold's changes read: (turned off, turned on, raised, lowered).
FLOOR_WORDS = ("removes the {what} (was {before})", "adds a {what} of {after}", "raises", "lowers")
ALLOWANCE_WORDS = ("turns off the {what} (was {before})", "turns on the {what} at {after}", "widens", "narrows")


def _threshold(key: str, what: str, before: Any, after: Any, floor: bool) -> PolicyChange | None:
    """A floor (higher is tighter) or an allowance (higher is looser); null is off for both."""
    if before == after:
        return None
    off, on, raised, lowered = FLOOR_WORDS if floor else ALLOWANCE_WORDS
    if after is None:
        return PolicyChange(key, before, after, LOOSENED, off.format(what=what, before=before))
    if before is None:
        return PolicyChange(key, before, after, TIGHTENED, on.format(what=what, after=after))
    higher = after > before
    direction = TIGHTENED if higher == floor else LOOSENED
    return PolicyChange(
        key, before, after, direction, f"{raised if higher else lowered} the {what} from {before} to {after}"
    )


def policy_changes(base: Mapping[str, Any], current: Mapping[str, Any]) -> list[PolicyChange]:
    """Every gate threshold that differs between the base params' gates and these, loosened first."""
    changes: list[PolicyChange | None] = []

    def add(key: str, before: Any, after: Any, direction: str, message: str) -> None:
        changes.append(PolicyChange(f"gates.{key}", before, after, direction, message))

    before_metrics, after_metrics = base.get("metrics", {}), current.get("metrics", {})
    for metric in sorted(set(before_metrics) | set(after_metrics)):
        key, label = f"gates.metrics.{metric}", _label(metric)
        old = before_metrics.get(metric) or {"min": None, "max_drop": None}
        new = after_metrics.get(metric) or {"min": None, "max_drop": None}
        changes.append(_threshold(f"{key}.min", f"{label} floor", old["min"], new["min"], floor=True))
        what = f"allowed {label} drop against production"
        changes.append(_threshold(f"{key}.max_drop", what, old["max_drop"], new["max_drop"], floor=False))

    old_conf, new_conf = base.get("confidence"), current.get("confidence")
    if new_conf is None and old_conf is not None:
        add("confidence", old_conf, None, LOOSENED, "compares point estimates instead of confidence intervals")
    elif old_conf is None and new_conf is not None:
        message = f"compares {new_conf:.0%} confidence intervals instead of point estimates"
        add("confidence", None, new_conf, TIGHTENED, message)
    elif old_conf is not None and new_conf is not None and old_conf != new_conf:  # a None is handled above
        direction = TIGHTENED if new_conf > old_conf else LOOSENED
        add("confidence", old_conf, new_conf, direction, f"changes the confidence level from {old_conf} to {new_conf}")
    old_samples, new_samples = base.get("bootstrap_samples"), current.get("bootstrap_samples")
    if old_samples != new_samples:
        message = f"uses {new_samples} bootstrap resamples instead of {old_samples}"
        add("bootstrap_samples", old_samples, new_samples, CHANGED, message)

    old_slices, new_slices = base.get("slices", {}), current.get("slices", {})
    old_columns, new_columns = set(old_slices.get("columns", [])), set(new_slices.get("columns", []))
    for column in sorted(old_columns - new_columns):
        add("slices.columns", column, None, LOOSENED, f"stops gating slices of {column!r}")
    for column in sorted(new_columns - old_columns):
        add("slices.columns", None, column, TIGHTENED, f"gates slices of {column!r}")
    for name, what in (("min_rows", "smallest slice size gated"), ("max_f1_drop", "allowed F1 drop per slice")):
        changes.append(_threshold(f"gates.slices.{name}", what, old_slices.get(name), new_slices.get(name), False))

    old_break, new_break = bool(base.get("allow_breaking_schema")), bool(current.get("allow_breaking_schema"))
    if new_break and not old_break:
        add("allow_breaking_schema", False, True, LOOSENED, "allows input schema changes that break API clients")
    elif old_break and not new_break:
        message = "blocks input schema changes that break API clients again"
        add("allow_breaking_schema", True, False, TIGHTENED, message)

    old_drift, new_drift = base.get("drift", {}), current.get("drift", {})
    for name, what in (("max_psi", "PSI limit per numeric column"), ("max_unseen_share", "limit on unseen categories")):
        changes.append(_threshold(f"gates.drift.{name}", what, old_drift.get(name), new_drift.get(name), floor=False))

    old_recent, new_recent = base.get("recent_outcomes"), current.get("recent_outcomes")
    if old_recent and not new_recent:
        add("recent_outcomes", old_recent, None, LOOSENED, "stops comparing with production on the newest outcomes")
    elif new_recent and not old_recent:
        add("recent_outcomes", None, new_recent, TIGHTENED, "compares with production on the newest outcomes")
    elif old_recent and new_recent:
        for name, what in (("max_drop", "allowed drop on the newest outcomes"), ("min_rows", "newest outcomes needed")):
            changes.append(_threshold(f"gates.recent_outcomes.{name}", what, old_recent[name], new_recent[name], False))

    found = [c for c in changes if c is not None]
    order = {LOOSENED: 0, TIGHTENED: 1, CHANGED: 2}
    return sorted(found, key=lambda c: order[c.direction])  # stable: params order within a direction


# Rollout rule parameters where a higher value lets more through (gates/sequential.py's tolerated and effect).
ALLOWANCES = frozenset({"tolerated", "tolerated_ratio", "effect", "effect_ratio", "min_rate", "slow_ms"})


def rollout_changes(base: Mapping[str, Any], current: Mapping[str, Any]) -> list[PolicyChange]:
    """Every rollout threshold that differs between the base params' `rollout` and these, loosened first.

    By name: `max_*` and a rule's tolerance, effect, minimum rate and slow threshold are allowances (higher
    is looser: more is let through, or only larger harm is caught); `min_*` (e.g. the quality rules'
    `min_labelled`), `power` and a bake's `duration_s` are floors (higher is tighter: more evidence before a
    verdict); a rule turned on from null tightens, turned off loosens; anything else that differs (the alias,
    shares, the canary weights, the outcomes' horizon, α and look count) is shown as changed.
    """
    changes: list[PolicyChange | None] = []
    _walk("rollout", base, current, changes)
    found = [c for c in changes if c is not None]
    order = {LOOSENED: 0, TIGHTENED: 1, CHANGED: 2}
    return sorted(found, key=lambda c: order[c.direction])


# Rollout keys named like an allowance that are none: more looks spread α thinner but watch longer (changed).
NEITHER = frozenset({"max_looks"})


def _settings(rule: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in rule.items())


def _walk(key: str, before: Any, after: Any, changes: list[PolicyChange | None]) -> None:
    rule = f"rollout's {key.removeprefix('rollout.').replace('.', ' ').replace('_', ' ')} rule"
    if before is None and isinstance(after, Mapping):  # a rule that was off (null) is on
        changes.append(PolicyChange(key, None, dict(after), TIGHTENED, f"turns on the {rule} ({_settings(after)})"))
        return
    if isinstance(before, Mapping) and after is None:
        message = f"turns off the {rule} (was {_settings(before)})"
        changes.append(PolicyChange(key, dict(before), None, LOOSENED, message))
        return
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for name in sorted(set(before) | set(after), key=lambda n: list(after).index(n) if n in after else 1e9):
            _walk(f"{key}.{name}", before.get(name), after.get(name), changes)
        return
    if isinstance(before, list) and isinstance(after, list):
        weights = [s.get("weight") for s in before], [s.get("weight") for s in after]
        if weights[0] != weights[1]:
            changes.append(PolicyChange(key, weights[0], weights[1], CHANGED, f"changes the canary steps from "
                                        f"{weights[0]} to {weights[1]} (percent of traffic)"))  # fmt: skip
            return
        for i, (old, new) in enumerate(zip(before, after, strict=True)):
            _walk(f"{key}[{i}]", old, new, changes)
        return
    if before == after:
        return
    name = key.rsplit(".", 1)[-1]
    what = f"{key.removeprefix('rollout.').replace('.', ' ').replace('_', ' ')}"
    if (name.startswith("max_") and name not in NEITHER) or name in ALLOWANCES:
        changes.append(_threshold(key, f"rollout's {what}", before, after, floor=False))
    elif name.startswith("min_") or name in ("duration_s", "power"):
        changes.append(_threshold(key, f"rollout's {what}", before, after, floor=True))
    else:
        changes.append(
            PolicyChange(key, before, after, CHANGED, f"changes the rollout's {what} from {before} to {after}")
        )


def feature_store_changes(base: Mapping[str, Any], current: Mapping[str, Any]) -> list[PolicyChange]:
    """What a params change does to the feature store's settings (`feature_store`), loosened first.

    The service and repository are shown as changed; a longer max age, `stale: warn` and a wider skew
    tolerance loosen; a larger skew sample tightens.
    """
    changes: list[PolicyChange | None] = []
    for name in ("service", "repo", "entities"):
        if base.get(name) != current.get(name):
            before, after = base.get(name), current.get(name)
            message = f"changes the feature store's {name} from {before!r} to {after!r}"
            changes.append(PolicyChange(f"feature_store.{name}", before, after, CHANGED, message))
    old_ages, new_ages = base.get("max_age_s") or {}, current.get("max_age_s") or {}
    for view in [*new_ages, *(v for v in old_ages if v not in new_ages)]:
        what = f"max age of view {view!r} (s)"
        changes.append(
            _threshold(f"feature_store.max_age_s.{view}", what, old_ages.get(view), new_ages.get(view), False)
        )
    old_stale, new_stale = base.get("stale"), current.get("stale")
    if old_stale != new_stale:
        direction = LOOSENED if new_stale == "warn" else TIGHTENED
        message = f"{'serves' if new_stale == 'warn' else 'refuses'} stale features (stale: {old_stale} -> {new_stale})"
        changes.append(PolicyChange("feature_store.stale", old_stale, new_stale, direction, message))
    old_skew, new_skew = base.get("skew") or {}, current.get("skew") or {}
    what = "online/offline skew tolerance"
    changes.append(
        _threshold("feature_store.skew.tolerance", what, old_skew.get("tolerance"), new_skew.get("tolerance"), False)
    )
    what = "number of entities the skew check samples"
    changes.append(_threshold("feature_store.skew.sample", what, old_skew.get("sample"), new_skew.get("sample"), True))
    found = [c for c in changes if c is not None]
    order = {LOOSENED: 0, TIGHTENED: 1, CHANGED: 2}
    return sorted(found, key=lambda c: order[c.direction])


def feature_changes(
    base: Mapping[str, Any] | None, current: Mapping[str, Any] | None, against: str
) -> list[PolicyChange]:
    """How the features a candidate was trained from differ from `against`'s (e.g. production v3).

    Each side: {"service", "definitions_hash", "views": {view: [[feature, type], ...]}}, or None when it was
    trained from a CSV. A changed definitions hash is shown even when no feature list changed (a new
    transformation, source or TTL); each view's added, removed and retyped features are named.
    """
    if base is None and current is None:
        return []
    if current is None:
        assert base is not None
        message = f"trains from the CSV, not feature service {base['service']!r} as {against} did"
        return [PolicyChange("feature_store.service", base["service"], None, CHANGED, message)]
    if base is None:
        message = (
            f"trains from feature service {current['service']!r} (definitions {current['definitions_hash'][:12]}); "
            f"{against} was trained from a CSV"
        )
        return [PolicyChange("feature_store.service", None, current["service"], CHANGED, message)]
    changes = []
    if base["service"] != current["service"]:
        message = f"trains from feature service {current['service']!r} instead of {base['service']!r} ({against})"
        changes.append(PolicyChange("feature_store.service", base["service"], current["service"], CHANGED, message))
    old_hash, new_hash = base.get("definitions_hash", ""), current.get("definitions_hash", "")
    if old_hash != new_hash:
        message = f"changes the feature definitions from {old_hash[:12]} ({against}) to {new_hash[:12]}"
        changes.append(PolicyChange("feature_store.definitions_hash", old_hash, new_hash, CHANGED, message))
    old_views, new_views = base.get("views") or {}, current.get("views") or {}
    for view in [*new_views, *(v for v in old_views if v not in new_views)]:
        before = {name: kind for name, kind in old_views.get(view, [])}
        after = {name: kind for name, kind in new_views.get(view, [])}
        if list(before.items()) == list(after.items()):
            continue
        parts = []
        if view not in old_views:
            parts.append("is new")
        elif view not in new_views:
            parts.append("is no longer read")
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        retyped = [f"{n} {before[n]} -> {after[n]}" for n in after if n in before and before[n] != after[n]]
        parts += [f"adds {', '.join(added)}"] if added and view in old_views else []
        parts += [f"removes {', '.join(removed)}"] if removed and view in new_views else []
        parts += [f"retypes {', '.join(retyped)}"] if retyped else []
        if not parts:
            parts.append("reorders its features")
        message = f"feature view {view!r} {'; '.join(parts)} (against {against})"
        key = f"feature_store.views.{view}"
        old_list = [f"{n}:{k}" for n, k in before.items()]
        new_list = [f"{n}:{k}" for n, k in after.items()]
        changes.append(PolicyChange(key, old_list or None, new_list or None, CHANGED, message))
    return changes
