"""Delayed outcomes joined to the prediction log: which logged answers turned out right.

Pure: the prediction log and the outcomes come in as frames. A prediction is
one logged answer (prediction_id, time, entity_id, version, role, score,
label). An outcome names what it labels in one of two ways:

- **by id**: `prediction_id` (and optionally `observed_at`): exactly that
  prediction. No horizon applies; an `observed_at` earlier than the
  prediction's time is refused (`before_prediction`).
- **by entity**: `entity_id` and `observed_at`: per version and role, ONE
  prediction of that entity, the latest made within `horizon` before the
  observation (observed_at - horizon ≤ time ≤ min(observed_at,
  received_at), both ends included: never a prediction made after the
  outcome arrived). The customer's outcome is what production, the canary
  and the shadow all said something about, so each of their answers is
  labelled by it; that is what lets live quality pair versions on the same
  customers.
  Only one answer each: one customer weighs one row, whatever a client sends
  (a client repeating requests for its own id must not outweigh the others).

Every outcome row ends up in exactly one of: used, `incomplete` (no key or no
outcome), `duplicate` (the same label again: the same key and outcome, or
outcomes that only repeat what an earlier row already gave the same
predictions), `unknown_id`, `before_prediction`, `no_prediction_in_horizon`,
`conflicting` (every prediction it reaches was given different outcomes by
different rows: such predictions stay unlabelled), `observed_after_received`
(observed_at later than received_at + CLOCK_SKEW: a label dated in the
future is never used, else it would label predictions made after it arrived).
So feeding the same outcomes twice labels the same set, and the counts add up
to the rows given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd

REASONS = (
    "incomplete",
    "duplicate",
    "unknown_id",
    "before_prediction",
    "no_prediction_in_horizon",
    "conflicting",
    "observed_after_received",
)
CLOCK_SKEW = pd.Timedelta(minutes=5)  # an observation may be stamped this much after it was received
EXAMPLES = 5  # identifiers kept per reason
LABELLED_COLUMNS = [
    *("prediction_id", "version", "role", "entity_id", "time", "score", "predicted", "actual"),
    "by_entity",  # labelled by an entity outcome (else by its prediction id)
]


@dataclass(frozen=True, eq=False)
class JoinResult:
    """The labelled predictions, and what of the outcomes was not used and why."""

    labelled: pd.DataFrame  # LABELLED_COLUMNS; predicted/actual: the positive class, as bool; by_entity: how
    unused: Mapping[str, int]  # reason -> outcome rows not used (REASONS, all present)
    examples: Mapping[str, tuple[str, ...]]  # reason -> a few keys ("id:…", "entity:…@…") or prediction ids
    used: int  # outcome rows that labelled at least one prediction
    conflicted_predictions: int  # predictions left unlabelled because their outcomes disagree
    unlabelled: int  # predictions of the log with no usable outcome (yet)


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as nullable text; all-missing when the frame lacks it."""
    if column not in frame:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    return frame[column].astype("string")


def _times(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as UTC timestamps; all-missing when the frame lacks it."""
    if column not in frame:
        return pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    return pd.to_datetime(frame[column], utc=True)


def normalised_labels(labels: pd.DataFrame, positive_label: str, negative_label: str | None = None) -> pd.DataFrame:
    """One row per outcome: its key (by id or by entity), the entity and time, and whether it is positive.

    `key` is "id:<prediction_id>" or "entity:<entity_id>@<observed_at ISO>", or missing when the row names
    neither, has no outcome, or (with `negative_label`) an outcome that is neither class: such a row is `incomplete`,
    never read as a negative.
    """
    prediction_id, entity_id = _text(labels, "prediction_id"), _text(labels, "entity_id")
    observed_at = _times(labels, "observed_at")
    outcome = _text(labels, "outcome")
    by_id = prediction_id.notna()
    by_entity = ~by_id & entity_id.notna() & observed_at.notna()
    iso = observed_at.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").astype("string")
    key = pd.Series(pd.NA, index=labels.index, dtype="string")
    key[by_id] = "id:" + prediction_id[by_id]
    key[by_entity] = "entity:" + entity_id[by_entity] + "@" + iso[by_entity]
    key[outcome.isna()] = pd.NA
    if negative_label is not None:
        key[~outcome.isin([str(positive_label), str(negative_label)]).fillna(False).astype(bool)] = pd.NA
    return pd.DataFrame(
        {
            "key": key,
            "prediction_id": prediction_id.where(by_id),
            "entity_id": entity_id.where(by_entity),
            "observed_at": observed_at,
            "received_at": _times(labels, "received_at"),
            "actual": (outcome == str(positive_label)).fillna(False).astype(bool),
        }
    ).reset_index(drop=True)


def _predictions(predictions: pd.DataFrame, positive_label: str) -> pd.DataFrame:
    """The log with typed columns; prediction ids must be unique."""
    log = pd.DataFrame(
        {
            "prediction_id": _text(predictions, "prediction_id"),
            "version": _text(predictions, "version"),
            "role": _text(predictions, "role"),
            "entity_id": _text(predictions, "entity_id"),
            "time": _times(predictions, "time"),
            "score": predictions["score"].astype(float),
            "predicted": (_text(predictions, "label") == str(positive_label)).fillna(False).astype(bool),
        }
    ).reset_index(drop=True)
    if log["prediction_id"].isna().any() or log["prediction_id"].duplicated().any():
        raise ValueError("every logged prediction needs a unique prediction_id")
    return log


def _assign_by_id(rows: pd.DataFrame, log: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """(row, prediction_id, actual) for outcomes given by id, and each such row's refusal reason (or missing)."""
    joined = rows.reset_index(names="row").merge(
        log[["prediction_id", "time"]], on="prediction_id", how="left", indicator=True
    )
    reason = pd.Series(pd.NA, index=joined["row"].to_numpy(), dtype="string")
    unknown = (joined["_merge"] == "left_only").to_numpy()
    early = (joined["observed_at"] < joined["time"]).fillna(False).to_numpy()
    reason[unknown] = "unknown_id"
    reason[~unknown & early] = "before_prediction"
    ok = joined[~unknown & ~early]
    return ok[["row", "prediction_id", "actual"]], reason


def _assign_by_entity(rows: pd.DataFrame, log: pd.DataFrame, horizon: timedelta) -> tuple[pd.DataFrame, pd.Series]:
    """(row, prediction_id, actual) for outcomes given by entity, and each row that reaches none, with why.

    Each row labels one prediction per (version, role): the latest in the horizon.
    """
    known = log[log["entity_id"].notna()][["prediction_id", "entity_id", "time", "version", "role"]]
    joined = rows.drop(columns="prediction_id").reset_index(names="row").merge(known, on="entity_id", how="left")
    until = joined["observed_at"].where(~(joined["received_at"] < joined["observed_at"]), joined["received_at"])
    not_after = (joined["time"] <= until).fillna(False)
    inside = not_after & (joined["time"] >= joined["observed_at"] - pd.Timedelta(horizon)).fillna(False)
    per_row = pd.DataFrame(
        {"row": joined["row"], "inside": inside, "not_after": not_after, "any": joined["time"].notna()}
    )
    seen = per_row.groupby("row").agg(inside=("inside", "any"), not_after=("not_after", "any"), any=("any", "any"))
    reason = pd.Series(pd.NA, index=seen.index, dtype="string")
    only_later = ~seen["inside"] & seen["any"] & ~seen["not_after"]
    reason[~seen["inside"]] = "no_prediction_in_horizon"
    reason[only_later] = "before_prediction"
    ok = joined[inside].sort_values(["time", "prediction_id"], kind="stable")
    ok = ok.drop_duplicates(["row", "version", "role"], keep="last")
    return ok[["row", "prediction_id", "actual"]], reason[reason.notna()]


def join(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    horizon: timedelta,
    positive_label: str,
    negative_label: str | None = None,
) -> JoinResult:
    """The predictions labelled by the outcomes (by id, or by entity within `horizon`), and what was not used.

    Give `negative_label` too and an outcome that is neither class (another encoding, a typo) is `incomplete`.
    """
    log = _predictions(predictions, positive_label)
    rows = normalised_labels(labels, positive_label, negative_label)
    reason = pd.Series(pd.NA, index=rows.index, dtype="string")
    reason[rows["key"].isna()] = "incomplete"
    repeated = rows["key"].notna() & rows.duplicated(subset=["key", "actual"])
    reason[repeated] = "duplicate"
    future = (rows["observed_at"] > rows["received_at"] + CLOCK_SKEW).fillna(False).astype(bool)
    reason[future & reason.isna()] = "observed_after_received"
    live = rows[reason.isna()]
    by_id = live[live["prediction_id"].notna()]
    by_entity = live[live["prediction_id"].isna()]
    id_pairs, id_reason = _assign_by_id(by_id, log)
    entity_pairs, entity_reason = _assign_by_entity(by_entity, log, horizon)
    reason.update(pd.concat([id_reason.dropna(), entity_reason]))
    pairs = pd.concat([id_pairs, entity_pairs]).sort_values("row", kind="stable")

    outcomes_per_prediction = pairs.groupby("prediction_id")["actual"].nunique()
    conflicted = outcomes_per_prediction.index[outcomes_per_prediction > 1]
    clear = pairs[~pairs["prediction_id"].isin(conflicted)]
    kept = clear.drop_duplicates("prediction_id", keep="first")
    reached = pairs["row"].unique()
    used_rows = kept["row"].unique()
    in_conflict = pairs.loc[pairs["prediction_id"].isin(conflicted), "row"].unique()
    unused_reached = pd.Index(reached).difference(pd.Index(used_rows))
    reason[unused_reached.intersection(pd.Index(in_conflict))] = "conflicting"
    reason[unused_reached.difference(pd.Index(in_conflict))] = "duplicate"

    labelled = log.merge(kept[["prediction_id", "actual"]], on="prediction_id", how="inner")
    labelled["by_entity"] = ~labelled["prediction_id"].isin(id_pairs["prediction_id"])
    labelled = labelled.sort_values(["time", "prediction_id"], kind="stable").reset_index(drop=True)
    examples = {r: tuple(rows.loc[reason == r, "key"].dropna().head(EXAMPLES)) for r in REASONS}
    examples["conflicting"] = tuple(str(p) for p in conflicted[:EXAMPLES])
    return JoinResult(
        labelled=labelled[LABELLED_COLUMNS],
        unused={r: int((reason == r).sum()) for r in REASONS},
        examples=examples,
        used=len(used_rows),
        conflicted_predictions=len(conflicted),
        unlabelled=len(log) - len(labelled),
    )


def merge_labels(existing: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """`existing` with the rows of `new` it lacks; counts of rows added, duplicate, conflicting, incomplete.

    A row is a duplicate when a row with the same key (prediction id, or entity and observation time) and
    the same outcome is already there, so merging the same file twice adds nothing. A row that contradicts
    one already there is added and counted `conflicting`: `join` leaves the prediction it reaches unlabelled.
    Rows with no key or no outcome are not added (`incomplete`).
    """
    # the outcome's text is compared as given, so any positive label gives the same keys
    old, fresh = normalised_labels(existing, "\0"), normalised_labels(new, "\0")
    old_outcomes, new_outcomes = _text(existing, "outcome").to_numpy(), _text(new, "outcome").to_numpy()
    seen = {(k, o) for k, o in zip(old["key"], old_outcomes, strict=True) if k is not pd.NA}
    keys = {k for k, _ in seen}
    take: list[bool] = []
    counts = {"added": 0, "duplicate": 0, "conflicting": 0, "incomplete": 0}
    for key, outcome in zip(fresh["key"], new_outcomes, strict=True):
        if key is pd.NA:
            counts["incomplete"] += 1
            take.append(False)
        elif (key, outcome) in seen:
            counts["duplicate"] += 1
            take.append(False)
        else:
            counts["added"] += 1
            counts["conflicting"] += key in keys
            seen.add((key, outcome))
            keys.add(key)
            take.append(True)
    added = new.reset_index(drop=True)[take]
    merged = pd.concat([existing, added], ignore_index=True) if len(added) else existing.reset_index(drop=True)
    return merged, counts
