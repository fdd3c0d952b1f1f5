"""A tiny real model, trained here, handed to the app factory: no MLflow, no files."""

from __future__ import annotations

import pytest
from mlflow.models import Model, infer_signature

from api.model.loaded_model import LoadedModel
from api.model.schema import FeatureSpec
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.train import train


@pytest.fixture(scope="session")
def trained():
    data = prepare(generate_churn(800, 3).astype(str), DataParams())
    return train(data, ModelParams(), test_size=0.25, seed=3)


def make_model(result, version: str = "7", max_batch_size: int = 100, pipeline=None) -> LoadedModel:
    X = result.split.X_train
    signature = infer_signature(X, result.model.predict(X.head(5)))
    features = [FeatureSpec(c.name, c.type.name, c.required) for c in signature.inputs.inputs]
    return LoadedModel(
        pipeline=pipeline or result.model,
        features=features,
        positive_label="Yes",
        max_batch_size=max_batch_size,
        info={
            "name": "churn",
            "version": version,
            "alias": "production",
            "run_id": f"run-{version}",
            "metrics": {"f1": 0.6},
            "git_sha": "abc",
        },
        mlflow_model=Model(signature=signature),
        parity_frames=[result.split.X_test.head(50)],
    )


@pytest.fixture
def records(trained) -> list[dict]:
    import json

    return json.loads(trained.split.X_test.head(20).to_json(orient="records"))
