"""Pure training and evaluation: data frames in, a fitted Pipeline and metrics out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from features import transformer_class
from gates.bootstrap import METRICS, HeldOutAnswers
from pipeline.core.config import ModelParams
from pipeline.core.data import Dataset


@dataclass(frozen=True)
class Split:
    """The train and test rows of a data set, features and target."""

    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


@dataclass(frozen=True)
class TrainResult:
    """A fitted pipeline, the split it was fitted and scored on, and its test metrics."""

    model: Pipeline
    split: Split
    metrics: dict[str, float]


def split_dataset(data: Dataset, test_size: float, seed: int) -> Split:
    """Stratified, seeded train/test split."""
    X_train, X_test, y_train, y_test = train_test_split(
        data.features, data.target, test_size=test_size, random_state=seed, stratify=data.target
    )
    return Split(X_train, X_test, y_train, y_test)


def feature_steps(params: ModelParams) -> list[tuple[str, Any]]:
    """The team's feature steps params.yaml names, unfitted, in order (named `module.Class`, numbered if repeated)."""
    steps: list[tuple[str, Any]] = []
    for step in params.features:
        name = step.transformer if all(step.transformer != n for n, _ in steps) else f"{step.transformer}#{len(steps)}"
        steps.append((name, transformer_class(step.transformer)(**step.args)))
    return steps


def model_columns(
    X: pd.DataFrame, numeric: list[str], categorical: list[str], params: ModelParams
) -> tuple[list[str], list[str]]:
    """The numeric and categorical columns the family's preprocessing sees, after the team's feature steps.

    The columns the steps add are found by running them once on `X` (the training rows): numbers join the
    numeric columns, anything else the categorical ones.
    """
    steps = feature_steps(params)
    if not steps:
        return numeric, categorical
    added = Pipeline(steps).fit_transform(X)
    new = [c for c in added.columns if c not in X.columns]
    is_number = pd.api.types.is_numeric_dtype
    return [*numeric, *(c for c in new if is_number(added[c]))], [
        *categorical,
        *(c for c in new if not is_number(added[c])),
    ]


def build_model(numeric: list[str], categorical: list[str], params: ModelParams, seed: int) -> Pipeline:
    """The team's feature steps, then the family's preprocessing and classifier, unfitted."""
    preprocess, classifier = params.family.build(numeric, categorical, params.hyperparameter_section, seed)
    return Pipeline([*feature_steps(params), ("preprocess", preprocess), ("classifier", classifier)])


def evaluate(model: Pipeline, X: pd.DataFrame, y: pd.Series, positive_label: str) -> dict[str, float]:
    """The metric names of the contract, scored with `positive_label` as positive."""
    predicted = model.predict(X)
    positive_column = list(model.classes_).index(positive_label)
    scores = model.predict_proba(X)[:, positive_column]
    y_true = np.asarray(y) == positive_label
    scored = HeldOutAnswers(np.asarray(predicted) == positive_label, np.asarray(scores, dtype=float))
    ones = np.ones((1, len(y_true)))  # every row once: the point estimate of the gate's own metric functions
    return {name: float(metric(ones, y_true, scored)[0]) for name, metric in METRICS.items()}


def train(data: Dataset, model_params: ModelParams, test_size: float, seed: int) -> TrainResult:
    """Split, fit and score; deterministic for a given seed."""
    split = split_dataset(data, test_size, seed)
    numeric, categorical = model_columns(split.X_train, data.numeric, data.categorical, model_params)
    model = build_model(numeric, categorical, model_params, seed)
    started = time.perf_counter()
    fit_params = model_params.family.fit_params(numeric, categorical)
    model.fit(split.X_train, split.y_train, **{f"classifier__{k}": v for k, v in fit_params.items()})
    training_time = time.perf_counter() - started
    metrics = evaluate(model, split.X_test, split.y_test, data.positive_label)
    metrics["training_time_s"] = round(training_time, 4)
    return TrainResult(model=model, split=split, metrics=metrics)
