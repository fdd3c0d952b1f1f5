"""Where models come from: the MLflow registry (the only I/O of the service)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from api.artifacts import FEATURE_SCHEMA, METRIC_TAG_PREFIX, SMOKE_EXAMPLES
from api.loaded_model import LoadedModel
from api.schema import FeatureSpec
from api.settings import Settings


class RegistrySource:
    """Resolves the alias (or pinned version) and loads versions from MLflow."""

    def __init__(self, settings: Settings, client: MlflowClient | None = None):
        self.settings = settings
        self.client = client or MlflowClient()

    def target_version(self) -> str:
        """The version that should be serving now; a cheap registry call."""
        s = self.settings
        if s.model_version:
            return s.model_version
        return str(self.client.get_model_version_by_alias(s.model_name, s.model_alias).version)

    def load(self, version: str) -> LoadedModel:
        s = self.settings
        mv = self.client.get_model_version(s.model_name, version)
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{s.model_name}/{version}"))
        metadata = Model.load(local)
        pipeline = mlflow.sklearn.load_model(str(local))
        schema = metadata.get_input_schema()
        features = [FeatureSpec(c.name, c.type.name, c.required) for c in schema.inputs]
        trained = json.loads(Path(self.client.download_artifacts(mv.run_id, FEATURE_SCHEMA)).read_text())
        examples = (_input_example(metadata, local, features), self._smoke_frame(mv.run_id, features))
        parity = [frame for frame in examples if frame is not None]
        return LoadedModel(
            pipeline=pipeline,
            features=features,
            positive_label=trained["positive_label"],
            max_batch_size=s.max_batch_size,
            info={
                "name": s.model_name,
                "version": str(mv.version),
                "alias": None if s.model_version else s.model_alias,
                "run_id": mv.run_id,
                "metrics": {
                    k.removeprefix(METRIC_TAG_PREFIX): float(v)
                    for k, v in mv.tags.items()
                    if k.startswith(METRIC_TAG_PREFIX)
                },
                "git_sha": mv.tags.get("git_sha"),
            },
            mlflow_model=metadata,
            parity_frames=parity,
        )

    def _smoke_frame(self, run_id: str, features: list[FeatureSpec]) -> pd.DataFrame | None:
        try:
            path = self.client.download_artifacts(run_id, SMOKE_EXAMPLES)
        except Exception:  # older runs may not have stored examples; parity then uses the input example only
            return None
        records = json.loads(Path(path).read_text())["records"]
        return _typed_frame(pd.DataFrame(records), features)


def _input_example(metadata: Model, local: Path, features: list[FeatureSpec]) -> pd.DataFrame | None:
    example = metadata.load_input_example(str(local))
    return None if example is None else _typed_frame(pd.DataFrame(example), features)


def _typed_frame(frame: pd.DataFrame, features: list[FeatureSpec]) -> pd.DataFrame:
    out = {}
    for f in features:
        column = frame[f.name]
        out[f.name] = (
            column.astype("float64") if f.numeric else column.astype(object).where(column.notna(), float("nan"))
        )
    return pd.DataFrame(out)
