"""The answers the gate compares: a model under gate scored on the candidate's test rows (pure, the model passed in)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from api.model.schema import FeatureSpec
from gates.bootstrap import HeldOutAnswers
from gates.evaluate import Production
from pipeline.core.data import Feature, coerce_to_schema

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
