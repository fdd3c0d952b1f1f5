"""The smoke stage: ask a served version about stored examples and record the verdict."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from gates.smoke_checks import Check, SmokeReport, predictions_match
from pipeline.data import coerce_to_schema
from pipeline.tracking import load_feature_schema, load_smoke_examples


def smoke_in_process(client: MlflowClient, name: str, version: str, run_id: str) -> SmokeReport:
    """Load the registered version with MLflow and check it on the stored examples."""
    uri = f"models:/{name}/{version}"
    examples = load_smoke_examples(client, run_id)
    schema, positive_label = load_feature_schema(client, run_id)
    try:
        model = mlflow.sklearn.load_model(uri)
    except Exception as exc:  # any load failure is a smoke failure, with its reason
        return SmokeReport(version, uri, [Check("load", False, f"{type(exc).__name__}: {exc}")])
    X = coerce_to_schema(pd.DataFrame(examples["records"]), schema)
    positive = list(model.classes_).index(positive_label)
    checks = [
        Check("load", True, f"loaded {uri}"),
        predictions_match(examples, list(model.predict(X)), list(model.predict_proba(X)[:, positive])),
    ]
    return SmokeReport(version, uri, checks)
