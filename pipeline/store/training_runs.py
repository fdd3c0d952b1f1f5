"""MLflow tracking adapter, the training runs: log one with everything later stages need, read it back."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pandas as pd
from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from api.release import contract
from api.release.contract import DATA_PROFILE, FEATURE_SCHEMA, SMOKE_EXAMPLES
from api.release.safe_model import ALLOWED_TYPES
from families import Family
from gates.profile import profile
from pipeline.ci.provenance import git_sha
from pipeline.core.config import Params
from pipeline.core.data import Dataset, Feature, coerce_to_schema
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.feature_training import METADATA_KEY, SERVICE_FILE, FeatureSource, record_json
from pipeline.core.train import TrainResult
from pipeline.store.connection import TrackingStore

if TYPE_CHECKING:
    from matplotlib.axes import Axes  # imported only when training draws (_log_plots)

    from api.release.contract import SmokeExamples

TEST_SET = "eval/test.csv"
TARGET_COLUMN = "__target__"


def ensure_experiment(tracking: TrackingStore, params: Params) -> str:
    """The experiment id, creating it (with a local artifact root on a local store)."""
    name = params.registry.experiment
    found = tracking.client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None if tracking.is_server else Path(params.registry.artifact_location).resolve().as_uri()
    return tracking.client.create_experiment(name, artifact_location=location)


def smoke_examples(result: TrainResult, data: Dataset, count: int) -> SmokeExamples:
    """Inputs from the test set with the outputs the model gave them at training time."""
    X = result.split.X_test.head(count)
    positive = list(result.model.classes_).index(data.positive_label)
    return {
        "records": json.loads(X.to_json(orient="records")),
        "predictions": [str(p) for p in result.model.predict(X)],
        "probabilities": [float(p) for p in result.model.predict_proba(X)[:, positive]],
    }


def log_training_run(
    tracking: TrackingStore, params: Params, data: Dataset, result: TrainResult, source: FeatureSource | None = None
) -> str:
    """Log one training run with everything the later stages and people need; returns its id.

    `source`: the feature service the data came from (None: the CSV at data.path). Its tags go on the run,
    and its feature_service.json into the logged model's directory (and MLmodel's metadata).

    Through the client of `tracking` only: nothing here reads or sets MLflow's global tracking URI.
    """
    client = tracking.client
    run_id: str = client.create_run(ensure_experiment(tracking, params)).info.run_id
    try:
        _log_run(client, run_id, params, data, result, source)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def _log_run(
    client: MlflowClient, run_id: str, params: Params, data: Dataset, result: TrainResult, source: FeatureSource | None
) -> None:
    data_path = params.data.path
    if source is not None:
        data_path = f"{params.feature_store.entities} (feature service {source.description.service})"
    tags = {
        contract.GIT_SHA: git_sha(),
        contract.DATA_FINGERPRINT: data.fingerprint,
        contract.DATA_ROWS: str(data.rows),
        contract.DATA_PATH: data_path,
        contract.MODEL_TYPE: params.model.type,
        contract.POSITIVE_LABEL: data.positive_label,
        contract.GATE: "pending",
        **(source.tags if source is not None else {}),
    }
    logged_params = {
        **{f"data.{k}": v for k, v in params.data.model_dump().items()},
        contract.MODEL_TYPE: params.model.type,
        **{f"model.{k}": v for k, v in params.model.hyperparameters().items()},
        "model.features": json.dumps([f.model_dump() for f in params.model.features]),
    }
    if source is not None:
        store = params.feature_store
        logged_params |= {
            "feature_store.service": store.service,
            "feature_store.repo": store.repo,
            "feature_store.entities": store.entities,
            "feature_store.stale": store.stale,
            "feature_store.max_age_s": json.dumps(store.max_age_s, sort_keys=True),
            **source.params,
        }
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in result.metrics.items()],
        params=[Param(k, str(v)) for k, v in logged_params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    model_id = _log_model(client, run_id, result, params.model.family, source)
    client.set_tag(run_id, contract.MODEL_ID, model_id)
    schema = {
        "features": [asdict(f) for f in data.schema],
        "target": params.data.target,
        "positive_label": data.positive_label,
    }
    client.log_dict(run_id, schema, FEATURE_SCHEMA)
    # log_dict takes any JSON-serialisable mapping; MLflow annotates it dict[str, Any], which a TypedDict is not.
    client.log_dict(run_id, smoke_examples(result, data, params.smoke.examples), SMOKE_EXAMPLES)  # type: ignore[arg-type]
    kinds = {f.name: f.kind for f in data.schema}
    client.log_dict(run_id, profile(result.split.X_train, kinds), DATA_PROFILE)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        test = result.split.X_test.assign(**{TARGET_COLUMN: result.split.y_test.values})
        test.to_csv(Path(tmp) / "test.csv", index=False)
        client.log_artifact(run_id, str(Path(tmp) / "test.csv"), "eval")
    _log_plots(client, run_id, result, data.positive_label)


def _log_model(
    client: MlflowClient, run_id: str, result: TrainResult, model_family: Family, source: FeatureSource | None
) -> str:
    """The fitted pipeline as a logged model of the run (skops, signature, input example); returns its id.

    A model trained from a feature service carries feature_service.json beside MLmodel, and the same record
    in MLmodel's metadata, which the artifact digest covers.
    """
    import mlflow.sklearn

    X_train = result.split.X_train
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, model_type="sklearn")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.sklearn.save_model(
            result.model,
            str(Path(tmp) / "model"),
            serialization_format="skops",
            signature=infer_signature(X_train, result.model.predict(X_train.head(50))),
            input_example=X_train.head(3),
            pyfunc_predict_fn="predict",
            metadata=None if source is None else {METADATA_KEY: source.record},
            skops_trusted_types=_trusted_types(result.model),
            # Explicit requirements: inferring them starts a subprocess that reloads the model.
            pip_requirements=[
                *mlflow.sklearn.get_default_pip_requirements(include_skops=True),
                *model_family.requirements,
            ],
        )
        if source is not None:
            (Path(tmp) / "model" / SERVICE_FILE).write_text(record_json(source.record))
        client.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, models=[LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def _trusted_types(model: object) -> list[str]:
    """Types skops does not trust by default but that this model, built here, contains.

    The model is serialised with skops (safe to load); we vouch only for the
    types of the estimator we just fitted ourselves.
    """
    import skops.io  # slow to import (it walks all of sklearn); only training needs it

    untrusted: list[str] = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    refused = set(untrusted) - ALLOWED_TYPES
    if refused:  # caught here, at training, rather than when a version is first loaded
        raise ConfigError(
            f"the fitted pipeline holds types the serving allow-list does not admit: {', '.join(sorted(refused))} "
            "(a family lists its types in families/; feature steps keep their state to plain values)"
        )
    return untrusted


def _log_plots(client: MlflowClient, run_id: str, result: TrainResult, positive_label: str) -> None:
    # Imported here: only training draws, and matplotlib costs every other command a third of a second.
    import matplotlib

    matplotlib.use("Agg")  # plots are files; no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    X, y = result.split.X_test, result.split.y_test
    y_true = (y == positive_label).to_numpy()
    positive = list(result.model.classes_).index(positive_label)
    scores = result.model.predict_proba(X)[:, positive]
    plots: dict[str, Callable[[Axes], object]] = {
        "plots/confusion_matrix.png": lambda ax: ConfusionMatrixDisplay.from_predictions(
            y, result.model.predict(X), ax=ax, colorbar=False
        ),
        "plots/roc_curve.png": lambda ax: RocCurveDisplay.from_predictions(y_true, scores, ax=ax),
        "plots/precision_recall.png": lambda ax: PrecisionRecallDisplay.from_predictions(y_true, scores, ax=ax),
    }
    for path, draw in plots.items():
        fig, ax = plt.subplots(figsize=(5, 4))
        draw(ax)
        ax.set_title(Path(path).stem.replace("_", " "))
        client.log_figure(run_id, fig, path)
        plt.close(fig)


def load_feature_schema(client: MlflowClient, run_id: str) -> tuple[Feature, ...]:
    """The features a run was trained with."""
    raw = json.loads(Path(client.download_artifacts(run_id, FEATURE_SCHEMA)).read_text())
    return tuple(Feature(**f) for f in raw["features"])


def load_test_set(client: MlflowClient, run_id: str) -> tuple[pd.DataFrame, pd.Series]:
    """The exact test set a run was scored on, cast back to its schema."""
    schema = load_feature_schema(client, run_id)
    frame = load_raw_test_set(client, run_id)
    try:
        return coerce_to_schema(frame, schema), frame[TARGET_COLUMN].astype(str)
    except DataError as exc:
        raise DataError(f"stored test set of run {run_id}: {exc}") from None


def load_raw_test_set(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """The stored test set as text columns, target included (column TARGET_COLUMN)."""
    path = client.download_artifacts(run_id, TEST_SET)
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def load_smoke_examples(client: MlflowClient, run_id: str) -> SmokeExamples:
    """The smoke examples a run stored: input records and the answers the model gave them at training."""
    return cast("SmokeExamples", json.loads(Path(client.download_artifacts(run_id, SMOKE_EXAMPLES)).read_text()))
