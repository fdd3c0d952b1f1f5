"""Pure training and evaluation: data frames in, a fitted Pipeline and metrics out."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from gates.bootstrap import METRICS, Scored
from pipeline.core.config import ModelParams
from pipeline.core.data import Dataset

ESTIMATORS = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
}


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


def build_model(numeric: list[str], categorical: list[str], params: ModelParams, seed: int) -> Pipeline:
    """Preprocessing plus the estimator chosen in params."""
    transformers = []
    if numeric:
        transformers.append(("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric))
    if categorical:
        transformers.append(
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            )
        )
    estimator = ESTIMATORS[params.type](random_state=seed, **params.hyperparameters())
    return Pipeline([("preprocess", ColumnTransformer(transformers)), ("classifier", estimator)])


def evaluate(model: Pipeline, X: pd.DataFrame, y: pd.Series, positive_label: str) -> dict[str, float]:
    """The metric names of the contract, scored with `positive_label` as positive."""
    predicted = model.predict(X)
    positive_column = list(model.classes_).index(positive_label)
    scores = model.predict_proba(X)[:, positive_column]
    y_true = np.asarray(y) == positive_label
    scored = Scored(np.asarray(predicted) == positive_label, np.asarray(scores, dtype=float))
    ones = np.ones((1, len(y_true)))  # every row once: the point estimate of the gate's own metric functions
    return {name: float(metric(ones, y_true, scored)[0]) for name, metric in METRICS.items()}


def train(data: Dataset, model_params: ModelParams, test_size: float, seed: int) -> TrainResult:
    """Split, fit and score; deterministic for a given seed."""
    split = split_dataset(data, test_size, seed)
    model = build_model(data.numeric, data.categorical, model_params, seed)
    started = time.perf_counter()
    model.fit(split.X_train, split.y_train)
    training_time = time.perf_counter() - started
    metrics = evaluate(model, split.X_test, split.y_test, data.positive_label)
    metrics["training_time_s"] = round(training_time, 4)
    return TrainResult(model=model, split=split, metrics=metrics)
