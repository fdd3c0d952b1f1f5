"""What the gate compares, read from MLflow: the candidate run and the production version, fetched and loaded safely.

Scoring them is pipeline/core/gate_answers.py's (the models passed in); writing the verdict, gate_record.py's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

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
    stored_json,
)
from api.release.contract import DATA_PROFILE, METRIC_TAG_PREFIX
from pipeline.core.data import Feature
from pipeline.core.gate_answers import ModelUnderGate

if TYPE_CHECKING:
    from gates.profile import Profile


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
        profile=cast("Profile | None", stored_json(client, run_id, DATA_PROFILE)),
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


class ProductionRefused(RefusedVersion):
    """Production may not serve (the release check said no): the gate cannot trust its answers."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(version, reason)
        self.args = (f"production v{version} refused: {reason}",)


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
        raise ProductionRefused(version, exc.reason) from None
    except MlflowException as exc:
        if not is_not_found(exc):
            raise  # the registry itself failed: exit 3, not a gate verdict
        return None, f"artifact missing: {exc.message}"
    except (OSError, KeyError, ValueError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"
