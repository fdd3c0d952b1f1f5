"""The version a benchmark measures: production from the registry as the API loads it, else one trained here.

Shared by benchmarks/decode_predict.py and benchmarks/live_counting.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from api.model.loaded_model import LoadedModel

ROOT = Path(__file__).resolve().parents[1]


def registry_version(name: str, alias: str) -> tuple[LoadedModel, pd.DataFrame, str] | None:
    """The registry's version (as the API loads it) and its test set; None when there is no registry with it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{ROOT / 'mlflow.db'}" if (ROOT / "mlflow.db").exists() else ""
    )
    if not uri:
        return None
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from mlflow.tracking import MlflowClient

    from api.settings import Settings
    from api.source import RegistrySource
    from pipeline.store.training_runs import load_test_set

    try:
        client = MlflowClient()
        version = client.get_model_version_by_alias(name, alias)
    except Exception:
        return None
    settings = Settings.probing_as_the_environment_says(model_name=name, model_version=str(version.version))
    loaded = RegistrySource(settings).load(str(version.version))
    X, _ = load_test_set(client, str(version.run_id))
    return loaded, X, f"{name} version {version.version} from the registry ({uri})"


def trained_version() -> tuple[LoadedModel, pd.DataFrame, str]:
    """A version trained here on the default data and params, with its training profile's drift bins."""
    from mlflow.models import Model, infer_signature

    from api.model.drift import drift_bins
    from api.model.schema import FeatureSpec
    from gates.profile import profile
    from pipeline.core.churn_data import generate_churn
    from pipeline.core.data import prepare
    from pipeline.core.params_file import load_params
    from pipeline.core.train import train

    params = load_params(ROOT / "params.yaml")
    csv = ROOT / "data" / "churn.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False) if csv.exists() else generate_churn().astype(str)
    result = train(prepare(frame, params.data), params.model, test_size=0.25, seed=3)
    X = result.split.X_train
    signature = infer_signature(X, result.model.predict(X.head(5)))
    kinds = {c: "numeric" if X[c].dtype.kind == "f" else "categorical" for c in X.columns}
    model = LoadedModel(
        pipeline=result.model,
        features=[FeatureSpec(c.name, c.type.name, c.required) for c in signature.inputs.inputs],
        positive_label="Yes",
        max_batch_size=params.serving.max_batch_size,
        info={"name": "churn", "version": "1"},
        mlflow_model=Model(signature=signature),
        parity_frames=[result.split.X_test.head(25)],
        drift_bins=drift_bins(profile(X, kinds), list(X.columns)),
    )
    return model, result.split.X_test, "a version trained here on data/churn.csv with params.yaml (no registry)"
