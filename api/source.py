"""Where models come from: the MLflow registry (the only I/O of the service).

A version is fetched, its artifact digest recomputed, its verdicts checked
(api/release.py) and only then loaded, by skops against the allow-list
(api/safe_model.py). Nothing from an artifact runs.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from api.model.loaded_model import LoadedModel
from api.model.schema import FeatureSpec
from api.release.contract import FEATURE_SCHEMA, GIT_SHA, METRIC_TAG_PREFIX, SMOKE_EXAMPLES
from api.release.load_probe import ProbeLimits, probe
from api.release.safe_model import ArtifactBytes, RefusedModel, load_estimator_bytes, model_file, read_artifact
from api.release.verdicts import refusal, signature_state
from api.settings import Settings


class RefusedVersion(Exception):
    """The version may not serve: not released, changed since, badly signed, or unsafe to load."""

    def __init__(self, version: str, reason: str):
        self.version, self.reason = version, reason
        super().__init__(f"version {version} refused: {reason}")


@dataclass(frozen=True)
class ModelFiles:
    model_dir: Path
    feature_schema: Path
    artifact: ArtifactBytes  # read once: its digest and the load use the same bytes

    @property
    def digest(self) -> str:
        return self.artifact.digest


@dataclass(frozen=True)
class Verified:
    """A version that may serve: its files, the estimator loaded from them, its stored smoke examples."""

    files: ModelFiles
    pipeline: Any
    examples: dict | None


def fetch_model_files(client: MlflowClient, artifact_uri: str, run_id: str, dst: Path) -> ModelFiles:
    """Download a model's directory and its run's feature schema into `dst`; read and digest them.

    Raises RefusedModel when the directory is not a plain skops model.
    """
    local = mlflow.artifacts.download_artifacts(
        artifact_uri, dst_path=str(dst / "model"), tracking_uri=client.tracking_uri
    )
    model_dir = Path(local)
    model_file(model_dir)  # refuse a pickle or a code path before fetching anything else
    schema = Path(client.download_artifacts(run_id, FEATURE_SCHEMA, str(dst)))
    return ModelFiles(model_dir, schema, read_artifact(model_dir, schema))


def fetch_version_files(client: MlflowClient, name: str, version: str, run_id: str, dst: Path) -> ModelFiles:
    return fetch_model_files(client, client.get_model_version_download_uri(name, version), run_id, dst)


def stored_examples(client: MlflowClient, run_id: str) -> dict | None:
    """The smoke examples a run stored (inputs and the answers given at training), or None for older runs."""
    try:
        return json.loads(Path(client.download_artifacts(run_id, SMOKE_EXAMPLES)).read_text())
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    except (OSError, ValueError):
        return None


def load_probed(
    files: ModelFiles, examples: dict | None, limits: ProbeLimits | None = None, accepted: set[str] | None = None
) -> Any:
    """The estimator in `files`, loaded here only after a child process loaded and probed the same bytes.

    RefusedModel when the child refused, crashed, ran out of time or memory.
    `accepted` remembers digests a child already accepted in this process:
    the same bytes are not probed twice (a swap back to a version served before).
    """
    probed(files, examples, limits, accepted)
    return load_estimator_bytes(files.artifact.model_bytes)


def probed(
    files: ModelFiles, examples: dict | None, limits: ProbeLimits | None = None, accepted: set[str] | None = None
) -> None:
    """Have a child process load and probe `files` (unless `accepted` already holds their digest)."""
    if accepted is not None and files.digest in accepted:
        return
    digest = probe(files.model_dir, files.feature_schema, examples, limits or ProbeLimits.from_env())
    if digest != files.digest:
        raise RefusedModel(f"the probe accepted other bytes ({digest[:19]}…) than were verified")
    if accepted is not None:
        accepted.add(digest)


def load_verified(
    client: MlflowClient,
    name: str,
    mv,
    dst: Path,
    verify_key,
    require_smoke: bool = True,
    limits: ProbeLimits | None = None,
    load: bool = True,
    accepted: set[str] | None = None,
) -> Verified:
    """A version whose artifact, as it is now, may serve: fetched, checked, probed, loaded.

    Fetches into `dst`, recomputes the digest, checks the verdicts against it
    (before anything is loaded), has a child process load and probe it, then
    loads the same bytes (`load=False`: a caller that only decides, such as
    promote, loads nothing itself); RefusedVersion with the reason otherwise. The one
    check behind the API, promote, rollback, smoke, score and the gate's view
    of production.
    """
    version = str(mv.version)
    try:
        files = fetch_version_files(client, name, version, mv.run_id, dst)
        why = refusal(
            mv.tags,
            model=name,
            version=version,
            run_id=mv.run_id,
            digest=files.digest,
            verify_key=verify_key,
            require_smoke=require_smoke,
        )
        if why:
            raise RefusedVersion(version, why)
        examples = stored_examples(client, mv.run_id)
        if not load:
            probed(files, examples, limits, accepted)
            return Verified(files, None, examples)
        return Verified(files, load_probed(files, examples, limits, accepted), examples)
    except RefusedModel as exc:
        raise RefusedVersion(version, str(exc)) from None


class RegistrySource:
    """Resolves the alias (or pinned version) and loads versions from MLflow."""

    def __init__(self, settings: Settings, client: MlflowClient | None = None, verify_key=None):
        self.settings = settings
        self.client = client or MlflowClient()
        self.verify_key = verify_key
        self.accepted: set[str] = set()  # digests a probe child accepted: a swap back needs no new probe

    def target_version(self) -> str:
        """The version that should be serving now; a cheap registry call."""
        s = self.settings
        if s.model_version:
            return s.model_version
        return str(self.client.get_model_version_by_alias(s.model_name, s.model_alias).version)

    def load(self, version: str) -> LoadedModel:
        s = self.settings
        mv = self.client.get_model_version(s.model_name, version)
        with tempfile.TemporaryDirectory(prefix="model-") as tmp:
            verified = load_verified(
                self.client,
                s.model_name,
                mv,
                Path(tmp),
                self.verify_key,
                require_smoke=s.requires_smoke,
                accepted=self.accepted,
            )
            files, pipeline = verified.files, verified.pipeline
            metadata = Model.load(files.model_dir)
            schema = metadata.get_input_schema()
            features = [FeatureSpec(c.name, c.type.name, c.required) for c in schema.inputs]
            trained = json.loads(files.artifact.files[FEATURE_SCHEMA])
            stored = verified.examples
            smoke = _typed_frame(pd.DataFrame(stored["records"]), features) if stored else None
            examples = (_input_example(metadata, files.model_dir, features), smoke)
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
                "git_sha": mv.tags.get(GIT_SHA),
                "artifact_digest": files.digest,
                "signature": signature_state(
                    mv.tags, self.verify_key, model=s.model_name, version=str(mv.version), run_id=mv.run_id
                ),
            },
            mlflow_model=metadata,
            parity_frames=[frame for frame in examples if frame is not None],
        )


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
