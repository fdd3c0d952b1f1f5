"""Recompute a version's artifact digest, check its verdicts and that it still loads safely."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release import refusal
from api.safe_model import RefusedModel, load_estimator
from api.source import ModelFiles, fetch_model_files, fetch_version_files


@dataclass(frozen=True)
class Inspection:
    digest: str | None  # None when the artifact could not be read or is refused outright
    refusal: str | None  # None: releasable

    @property
    def ok(self) -> bool:
        return self.refusal is None


def inspect_version(client: MlflowClient, name: str, mv, verify_key, require_smoke: bool = True) -> Inspection:
    """Whether `mv` may serve, judged on its artifact as it is now (downloaded, digested, loaded)."""
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        try:
            files = fetch_version_files(client, name, str(mv.version), mv.run_id, Path(tmp))
        except RefusedModel as exc:
            return Inspection(None, str(exc))
        except (MlflowException, FileNotFoundError) as exc:
            if isinstance(exc, MlflowException) and exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
            return Inspection(None, f"artifact cannot be read: {exc}")
        why = refusal(
            mv.tags,
            model=name,
            version=str(mv.version),
            run_id=mv.run_id,
            digest=files.digest,
            verify_key=verify_key,
            require_smoke=require_smoke,
        )
        if why is None:
            try:
                load_estimator(files.model_dir)
            except RefusedModel as exc:
                why = f"no longer loads: {exc}"
    return Inspection(files.digest, why)


def logged_model_files(client: MlflowClient, model_id: str, run_id: str, dst: Path) -> ModelFiles:
    """The files of a run's logged model (before registration), checked to be a plain skops model."""
    location = client.get_logged_model(model_id).artifact_location
    return fetch_model_files(client, location, run_id, dst)
