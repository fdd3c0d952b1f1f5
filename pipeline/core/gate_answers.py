"""The answers the gate compares: models under gate scored on the test rows or the log's newest labelled rows.

Pure: the models and the rows are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from api.model.schema import FeatureSpec
from gates.bootstrap import HeldOutAnswers
from gates.evaluate import Production
from gates.recent_outcomes import Skipped
from pipeline.core.data import Feature, coerce_to_schema
from pipeline.core.quality_rules import training_rows

if TYPE_CHECKING:
    from gates.profile import Profile


@dataclass(frozen=True)
class ModelUnderGate:
    """A model the gate scores (the candidate or production): the fitted estimator and what was recorded with it."""

    label: str  # "run X" or "production vN"
    estimator: Any  # the fitted sklearn Pipeline
    features: tuple[Feature, ...]  # the training columns and their kinds (feature_schema.json)
    inputs: list[FeatureSpec]  # the serving contract: the MLmodel signature's input fields
    positive_label: str
    profile: Profile | None  # the training data's profile; None for runs logged before profiles
    digest: str
    logged: dict[str, float]  # the metrics recorded for it (run metrics, or the version's metric tags)


OUTCOME = "__outcome__"  # the newest rows' outcome column: never a feature's name


class CannotScore(Exception):
    """A model that cannot answer on these test rows, with the reason."""


def score(model: ModelUnderGate, raw: pd.DataFrame, positive_label: str, allow_missing: bool = False) -> HeldOutAnswers:
    """The model's answers on the test rows (text columns, as stored); CannotScore says why not.

    With `allow_missing`, columns the rows lack are sent as missing values, as
    a client of an allowed breaking schema change would.
    """
    lacking = [f.name for f in model.features if f.name not in raw.columns]
    if lacking and not allow_missing:
        names = ", ".join(repr(n) for n in lacking)
        raise CannotScore(f"the candidate's test rows lack column(s) {names} that {model.label} needs")
    frame = raw.assign(**{name: np.nan for name in lacking})
    X = coerce_to_schema(frame, model.features)
    try:
        classes = list(model.estimator.classes_)
        if positive_label not in classes:
            raise CannotScore(
                f"{model.label} does not predict the positive label {positive_label!r} (it has {classes})"
            )
        predicted = model.estimator.predict(X)
        probability = model.estimator.predict_proba(X)[:, classes.index(positive_label)]
    except (ValueError, KeyError, TypeError) as exc:  # a model that cannot score this data
        raise CannotScore(f"{model.label} failed on the test rows: {type(exc).__name__}: {exc}") from None
    return HeldOutAnswers(np.asarray(predicted) == positive_label, np.asarray(probability, dtype=float))


def production_answers(
    version: str,
    model: ModelUnderGate | None,
    error: str | None,
    raw: pd.DataFrame,
    positive_label: str,
    allow_missing: bool,
) -> tuple[Production, str | None]:
    """Production's answers on the candidate's rows, or its reason; plus a note when columns were filled as missing."""
    if model is None:
        return Production(version, None, error), None
    logged = model.logged
    lacking = [f.name for f in model.features if f.name not in raw.columns]
    try:
        scored = score(model, raw, positive_label, allow_missing)
    except CannotScore as exc:
        hint = " (the candidate removed them: see serving_schema)" if lacking else ""
        return Production(version, None, f"{exc}{hint}", logged), None
    note = None
    if lacking:
        note = f"production v{version} was scored with {', '.join(lacking)} missing (allowed schema break)"
    return Production(version, scored, None, logged), note


@dataclass(frozen=True)
class RecentAnswers:
    """Both models on the log's newest labelled rows: the outcomes, their answers, the rows skipped."""

    y_true: np.ndarray  # the outcome was the positive class
    candidate: HeldOutAnswers
    production: Production | None  # None: no production to compare with
    skipped: Skipped


def recent_answers(
    candidate: ModelUnderGate,
    production: Production | None,
    production_model: ModelUnderGate | None,
    newest: pd.DataFrame,
    features: Mapping[str, Any],
    allow_missing: bool,
) -> RecentAnswers:
    """The newest labelled rows (LABELLED_COLUMNS) scored by both models, their features from the log's JSON.

    `production` is the gate's production (its version, or why it could not be scored); `production_model`
    the model it loaded. Rows whose features are a feature store reference, or unreadable, are skipped and
    counted. CannotScore when the candidate cannot answer them.
    """
    positive = candidate.positive_label
    theirs_features = production_model.features if production_model else ()
    names = {f.name for f in candidate.features} | {f.name for f in theirs_features}
    columns = [*sorted(names), OUTCOME]
    found = training_rows(newest, features, columns, OUTCOME, (positive, f"not {positive}"), None)
    raw, y_true = found.frame.drop(columns=OUTCOME), (found.frame[OUTCOME] == positive).to_numpy(dtype=bool)
    scored = score(candidate, raw, positive)
    theirs = None
    if production is not None:
        error = production.error if production_model is None else None
        theirs, _ = production_answers(production.version, production_model, error, raw, positive, allow_missing)
    return RecentAnswers(y_true, scored, theirs, Skipped(found.from_feature_store, found.unreadable))
