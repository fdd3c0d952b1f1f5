"""outcomes and training-set: delayed labels into the prediction log, and the labelled log as training rows.

outcomes records a labels file as one label segment (named by its content: the
same labels twice write nothing new), then joins every label segment to every
logged prediction (gates/outcomes.py) and reports what was used and what was
not, and why. training-set appends the labelled log rows to the base data for
the retrain workflow, less the newest ones when gates.recent_outcomes is set
(the gate judges the candidate on those).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from api.release import contract
from api.release.check import stored_json
from gates.outcomes import REASONS, JoinResult, join
from gates.recent_outcomes import split_newest
from pipeline.ci import github
from pipeline.ci.progress import say
from pipeline.core.config import Params
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.quality_rules import training_rows
from pipeline.stages.context import Context
from pipeline.store import alias_moves, model_versions, training_runs
from pipeline.store.prediction_log import PredictionLog, normalise_labels, read_labels_file


@dataclass(frozen=True)
class Classes:
    """The model's positive label, and its negative one when known; where they were read from."""

    positive: str
    negative: str | None
    source: str


@dataclass(frozen=True)
class LogJoin:
    """The whole log joined: the predictions read, the labels read, and the join's result."""

    predictions: pd.DataFrame
    label_rows: int
    ambiguous_ids: int  # predictions left out: their prediction_id appears more than once in the log
    result: JoinResult
    unreadable_segments: tuple[str, ...] = ()  # log segments skipped (path: why)

    def counts(self) -> dict[str, int]:
        """The join's counts, for the reports: used, each reason not used, unlabelled predictions."""
        r = self.result
        return {
            "predictions": len(self.predictions),
            "label_rows": self.label_rows,
            "used": r.used,
            **{f"not_used_{reason}": r.unused[reason] for reason in REASONS},
            "labelled_predictions": len(r.labelled),
            "conflicted_predictions": r.conflicted_predictions,
            "unlabelled_predictions": r.unlabelled,
            "ambiguous_prediction_ids": self.ambiguous_ids,
            "unreadable_segments": len(self.unreadable_segments),
        }


def parse_since(text: str | None) -> datetime | None:
    """--since as a UTC instant (ISO 8601; without a zone, UTC); ConfigError naming it otherwise."""
    if not text:
        return None
    try:
        at = pd.Timestamp(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not an ISO 8601 time (e.g. 2026-03-01 or 2026-03-01T12:00Z)") from None
    at = at.tz_localize(UTC) if at.tzinfo is None else at.tz_convert(UTC)
    return at.to_pydatetime()


def model_classes(ctx: Context) -> Classes:
    """The positive label of the model's schema (production's version, else the newest) and the negative one.

    The negative label is the other class of that version's stored test set: with both named, an outcome that
    is neither (a typo, another encoding) is counted incomplete rather than read as a negative.
    """
    if not alias_moves.model_exists(ctx.client, ctx.model):
        return Classes(ctx.params.data.positive_label, None, "params data.positive_label (no registered version)")
    version = alias_moves.alias_version(ctx.client, ctx.model, ctx.registry.production_alias)
    if version is None:
        known = model_versions.versions(ctx.client, ctx.model)
        version = max((str(v.version) for v in known), key=int, default=None)
    if version is None:
        return Classes(ctx.params.data.positive_label, None, "params data.positive_label (no registered version)")
    run_id = str(ctx.version(version).run_id)
    schema = stored_json(ctx.client, run_id, contract.FEATURE_SCHEMA) or {}
    if "positive_label" not in schema:
        return Classes(ctx.params.data.positive_label, None, f"params data.positive_label (v{version} has no schema)")
    positive = str(schema["positive_label"])
    target = training_runs.load_raw_test_set(ctx.client, run_id)[training_runs.TARGET_COLUMN].dropna().astype(str)
    others = sorted(set(target) - {positive})
    negative = others[0] if len(others) == 1 else None
    return Classes(positive, negative, f"version {version}'s {contract.FEATURE_SCHEMA} and test set")


def join_log(params: Params, log: PredictionLog, classes: Classes, since: datetime | None = None) -> LogJoin:
    """Every label segment joined to the model's logged predictions (made at or after `since` when given)."""
    predictions, ambiguous = unique_predictions(log.predictions(params.registry.model_name, since))
    labels = log.labels()
    horizon = timedelta(days=params.rollout.outcomes.horizon_days)
    result = join(predictions, labels, horizon, classes.positive, classes.negative)
    return LogJoin(predictions, len(labels), ambiguous, result, tuple(log.unreadable))


def unique_predictions(predictions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The log with each prediction once, and how many rows were left out as ambiguous.

    A flush retried after a write that landed but reported failure stores its rows twice: identical copies
    (same id, time, version, role, label and score) are one prediction, kept once. Only an id whose copies
    differ (or a row without an id) is ambiguous: all its rows are left out and counted.
    """
    same = ["prediction_id", "time", "version", "role", "label", "score"]
    once = predictions.drop_duplicates(subset=same)
    ambiguous = once["prediction_id"].duplicated(keep=False) | once["prediction_id"].isna()
    left_out = predictions["prediction_id"].isin(set(once.loc[ambiguous, "prediction_id"].dropna()))
    left_out |= predictions["prediction_id"].isna()
    return once[~ambiguous].reset_index(drop=True), int(left_out.sum())


def describe_join(joined: LogJoin) -> list[str]:
    """The join's counts in words: used, each reason not used (with examples), unlabelled predictions."""
    r = joined.result
    lines = [
        f"join over the whole log: {len(joined.predictions)} predictions, {joined.label_rows} label rows",
        f"  used: {r.used} label rows, labelling {len(r.labelled)} predictions",
    ]
    for reason in REASONS:
        if r.unused[reason]:
            examples = ", ".join(r.examples[reason])
            lines.append(f"  not used, {reason.replace('_', ' ')}: {r.unused[reason]}" +
                         (f" (e.g. {examples})" if examples else ""))  # fmt: skip
    if r.conflicted_predictions:
        lines.append(f"  predictions left unlabelled by conflicting outcomes: {r.conflicted_predictions}")
    if joined.ambiguous_ids:
        lines.append(f"  predictions left out, their prediction_id repeated in the log: {joined.ambiguous_ids}")
    lines.append(f"  unlabelled predictions (no usable outcome yet): {r.unlabelled}")
    for segment in joined.unreadable_segments:
        lines.append(f"  skipped an unreadable log segment: {segment}")
    return lines


def outcomes_stage(params: Params, labels: str) -> str:
    """Record a labels file in the log (once), then join the whole log; returns the counts in words."""
    ctx = Context.open(params)
    log = PredictionLog.open(ctx.env.prediction_log_uri)
    path = Path(labels)
    frame = read_labels_file(path)
    table = normalise_labels(frame, f"file:{path.name}", datetime.now(UTC), f"--labels {path}")
    segment, written = log.write_labels(table)
    name = segment.rsplit("/", 1)[-1]
    if written:
        head = f"labels: {table.num_rows} rows of {path.name} recorded as labels/{name}"
    else:
        head = f"labels: {path.name} already recorded (labels/{name}): nothing new written"
    classes = model_classes(ctx)
    joined = join_log(params, log, classes)
    lines = [head, *describe_join(joined), f"classes: {classes.positive!r} positive, from {classes.source}"]
    github.write_summary("### Outcomes\n\n```\n" + "\n".join(lines) + "\n```", ctx.env.github)
    return "\n".join(lines)


def _base_data(params: Params) -> pd.DataFrame:
    """The base training data (data.path) as text, as training reads it; DataError when it cannot be used."""
    path = Path(params.data.path)
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist: run `python -m pipeline make-data` or point it at the data")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    if params.data.target not in frame.columns:
        raise DataError(f"data.path {path} has no target column {params.data.target!r}")
    return frame


def training_set_stage(params: Params, out: str, since: str | None) -> str:
    """The base data plus the labelled log rows, written as a CSV shaped like it; returns what came from where."""
    start = parse_since(since)
    env = PipelineEnv.read()  # the log and the data alone: no tracking store
    log = PredictionLog.open(env.prediction_log_uri)
    base = _base_data(params)
    target = params.data.target
    positive = params.data.positive_label
    others = sorted(set(base[target].dropna()) - {positive})
    if len(others) != 1:
        raise DataError(f"data.path's target {target!r} must have {positive!r} and one other class, has {others}")
    classes = Classes(positive, others[0], "params data")
    joined = join_log(params, log, classes, start)
    features = dict(zip(joined.predictions["prediction_id"], joined.predictions["features"], strict=True))
    labelled, held_out = joined.result.labelled, None
    if params.gates.recent_outcomes is not None:  # the gate judges the newest rows: the candidate must not see them
        held_out = split_newest(labelled, params.gates.recent_outcomes.rows)
        labelled = held_out.rest
    found = training_rows(labelled, features, list(base.columns), target, (positive, others[0]),
                          params.data.id_column)  # fmt: skip
    combined = pd.concat([base, found.frame.astype(object)], ignore_index=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    combined.to_csv(out, index=False)
    lines = [
        f"training set: {len(combined)} rows written to {out}: {len(base)} from {params.data.path}, "
        f"{len(found.frame)} from the labelled prediction log" + (f" (predictions since {since})" if since else ""),
    ]
    if held_out is not None:
        lines.append(f"  held out the newest {len(held_out.newest)} labelled rows for the gate's recent_outcomes rule"
                     + (f", and {held_out.same_entities} earlier answers to the same customers"
                        if held_out.same_entities else ""))  # fmt: skip
    if found.from_feature_store:
        lines.append(f"  skipped {found.from_feature_store} labelled rows whose features were a feature store "
                     "reference (their values are the store's, point in time, not in the log)")  # fmt: skip
    if found.shadow:
        lines.append(f"  skipped {found.shadow} shadow answers: copies of production's requests, counted once")
    if found.repeated:
        lines.append(f"  skipped {found.repeated} earlier labelled answers to customers already in: one row each")
    if found.unreadable:
        lines.append(f"  skipped {found.unreadable} labelled rows whose logged features are not a JSON object")
    if params.feature_store.service is not None:
        service = params.feature_store.service
        lines.append(f"  note: feature_store.service is {service!r}: training reads that feature service (point in "
                     "time), not this CSV; its labelled entities belong in feature_store.entities")  # fmt: skip
    say("\n".join(describe_join(joined)))
    return "\n".join(lines)
