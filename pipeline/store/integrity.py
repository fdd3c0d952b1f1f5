"""Recompute a version's artifact digest, check its verdicts and that it still loads safely."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.source import ModelFiles, RefusedVersion, fetch_model_files, load_verified


@dataclass(frozen=True)
class Inspection:
    digest: str | None  # None when refused
    refusal: str | None  # None: releasable

    @property
    def ok(self) -> bool:
        return self.refusal is None


def inspect_version(client: MlflowClient, name: str, mv, verify_key, require_smoke: bool = True) -> Inspection:
    """Whether `mv` may serve, judged on its artifact as it is now (downloaded, digested, probed in a child)."""
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        try:
            verified = load_verified(client, name, mv, Path(tmp), verify_key, require_smoke, load=False)
        except RefusedVersion as exc:
            return Inspection(None, exc.reason)
        except (MlflowException, FileNotFoundError) as exc:
            if isinstance(exc, MlflowException) and exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # the store itself failed: exit 3, not a verdict on the version
            return Inspection(None, f"artifact cannot be read: {exc}")
    return Inspection(verified.files.digest, None)


def logged_model_files(client: MlflowClient, model_id: str, run_id: str, dst: Path) -> ModelFiles:
    """The files of a run's logged model (before registration), checked to be a plain skops model."""
    location = client.get_logged_model(model_id).artifact_location
    return fetch_model_files(client, location, run_id, dst)
