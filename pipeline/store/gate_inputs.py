"""What the gate compares: the candidate run and the production version, fetched, loaded safely and scored."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from api.model.schema import FeatureSpec
from api.release import contract
from api.release.check import (
    ModelFiles,
    RefusedVersion,
    check_release,
    is_not_found,
    load_probed,
    logged_model_files,
    stored_examples,
)
from api.release.contract import DATA_PROFILE, METRIC_TAG_PREFIX
from gates.bootstrap import Scored
from gates.evaluate import Production
from pipeline.core.data import Feature, coerce_to_schema
from pipeline.store.tracking import load_json_artifact

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


def _under_gate(
    client: MlflowClient, label: str, files: ModelFiles, run_id: str, logged: dict[str, float], estimator: Any
) -> ModelUnderGate:
    trained = json.loads(files.artifact.files[contract.FEATURE_SCHEMA])
    signature = Model.load(str(files.model_dir)).get_input_schema()
    return ModelUnderGate(
        label=label,
        estimator=estimator,
        features=tuple(Feature(**f) for f in trained["features"]),
        inputs=[FeatureSpec(c.name, c.type.name, c.required) for c in signature.inputs] if signature else [],
        positive_label=trained["positive_label"],
        profile=cast("Profile | None", load_json_artifact(client, run_id, DATA_PROFILE)),
        digest=files.digest,
        logged=logged,
    )


def candidate(client: MlflowClient, run: Run, dst: Path) -> ModelUnderGate:
    """The run's logged model (not yet registered), loaded only after a child process loaded and probed it.

    RefusedModel unless it is a plain skops model that loads and answers its stored examples as recorded.
    """
    run_id = run.info.run_id
    files = logged_model_files(client, run.data.tags[contract.MODEL_ID], run_id, dst)
    estimator = load_probed(files, stored_examples(client, run_id))
    return _under_gate(client, f"run {run_id}", files, run_id, dict(run.data.metrics), estimator)


class ProductionRefused(Exception):
    """Production may not serve (the release check said no): the gate cannot trust its answers."""


def production(
    client: MlflowClient, name: str, version: str, dst: Path, verify_key: Ed25519PublicKey | None
) -> tuple[ModelUnderGate | None, str | None]:
    """The production version, or None and why it cannot be loaded (artifact missing, unreadable).

    Production goes through the release check first (verdicts before any load,
    then a probe in a child): ProductionRefused with the reason when it fails.
    """
    try:
        mv = client.get_model_version(name, version)
        verified = check_release(client, name, mv, dst, verify_key)
        logged = {
            k.removeprefix(METRIC_TAG_PREFIX): float(v) for k, v in mv.tags.items() if k.startswith(METRIC_TAG_PREFIX)
        }
        label = f"production v{version}"
        run_id = cast(str, mv.run_id)  # typed `str | None` by MLflow; the release check just fetched by it
        return _under_gate(client, label, verified.files, run_id, logged, verified.pipeline), None
    except RefusedVersion as exc:
        raise ProductionRefused(f"production v{version} refused: {exc.reason}") from None
    except MlflowException as exc:
        if not is_not_found(exc):
            raise  # the registry itself failed: exit 3, not a gate verdict
        return None, f"artifact missing: {exc.message}"
    except (OSError, KeyError, ValueError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"


def score(model: ModelUnderGate, raw: pd.DataFrame, positive_label: str, allow_missing: bool = False) -> Scored:
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
    return Scored(np.asarray(predicted) == positive_label, np.asarray(probability, dtype=float))


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
