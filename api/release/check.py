"""May this version serve, and if not, why: the one release check, and the verified fetch behind it.

A version is fetched, its artifact digest recomputed, its verdicts checked
(api/release/verdicts.py), its first load probed in a child process
(api/release/load_probe.py) and only then loaded, by skops against the
allow-list (api/release/safe_model.py). Nothing from an artifact runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release.contract import FEATURE_SCHEMA, SMOKE_EXAMPLES, SmokeExamples
from api.release.load_probe import ProbeCache, ProbeLimits, probe
from api.release.safe_model import ArtifactBytes, RefusedModel, load_estimator_bytes, model_file, read_artifact
from api.release.verdicts import image_refusal, refusal


def is_not_found(exc: MlflowException) -> bool:
    """True when MLflow says the thing asked for does not exist (as opposed to the store failing)."""
    return cast(str, exc.error_code) == "RESOURCE_DOES_NOT_EXIST"  # an attribute MLflow leaves untyped


class RefusedVersion(Exception):
    """The version may not serve: not released, changed since, badly signed, or unsafe to load."""

    def __init__(self, version: str, reason: str) -> None:
        self.version, self.reason = version, reason
        super().__init__(f"version {version} refused: {reason}")


@dataclass(frozen=True)
class ModelFiles:
    """A version's files as fetched: its model directory, its run's feature schema, and their bytes read once."""

    model_dir: Path
    feature_schema: Path
    artifact: ArtifactBytes  # read once: its digest and the load use the same bytes

    @property
    def digest(self) -> str:
        """The artifact digest of the bytes read (docs/DESIGN.md)."""
        return self.artifact.digest


@dataclass(frozen=True)
class Verified:
    """A version that may serve: its files, the estimator loaded from them, its stored smoke examples."""

    files: ModelFiles
    pipeline: Any  # the fitted sklearn Pipeline; None when the check loaded nothing
    examples: SmokeExamples | None


def fetch_model_files(client: MlflowClient, artifact_uri: str, run_id: str, dst: Path) -> ModelFiles:
    """Download a model's directory and its run's feature schema into `dst`; read and digest them.

    Raises RefusedModel when the directory is not a plain skops model.
    """
    import mlflow.artifacts  # the whole of mlflow: only a fetch needs it

    local = mlflow.artifacts.download_artifacts(
        artifact_uri, dst_path=str(dst / "model"), tracking_uri=client.tracking_uri
    )
    model_dir = Path(local)
    model_file(model_dir)  # refuse a pickle or a code path before fetching anything else
    schema = Path(client.download_artifacts(run_id, FEATURE_SCHEMA, str(dst)))
    return ModelFiles(model_dir, schema, read_artifact(model_dir, schema))


def logged_model_files(client: MlflowClient, model_id: str, run_id: str, dst: Path) -> ModelFiles:
    """The files of a run's logged model (before registration), checked to be a plain skops model."""
    location = client.get_logged_model(model_id).artifact_location
    return fetch_model_files(client, location, run_id, dst)


def fetch_version_files(client: MlflowClient, name: str, version: str, run_id: str, dst: Path) -> ModelFiles:
    """The files of a registered model version, checked to be a plain skops model."""
    return fetch_model_files(client, client.get_model_version_download_uri(name, version), run_id, dst)


def stored_examples(client: MlflowClient, run_id: str) -> SmokeExamples | None:
    """The smoke examples a run stored (inputs and the answers given at training), or None for older runs."""
    return cast(SmokeExamples | None, stored_json(client, run_id, SMOKE_EXAMPLES))


def stored_json(client: MlflowClient, run_id: str, path: str) -> Any:
    """A JSON artifact of a run, or None when the run has none (runs logged before it existed) or it is unreadable."""
    try:
        return json.loads(Path(client.download_artifacts(run_id, path)).read_text())
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise
    except (OSError, ValueError):
        return None


def load_probed(
    files: ModelFiles,
    examples: SmokeExamples | None,
    limits: ProbeLimits | None = None,
    accepted: set[str] | None = None,
    cache: ProbeCache | None = None,
) -> Any:
    """The estimator in `files`, loaded here only after a child process loaded and probed the same bytes.

    RefusedModel when the child refused, crashed, ran out of time or memory.
    `accepted` remembers digests a child already accepted in this process:
    the same bytes are not probed twice (a swap back to a version served before).
    """
    probed(files, examples, limits, accepted, cache)
    return load_estimator_bytes(files.artifact.model_bytes)


def probed(
    files: ModelFiles,
    examples: SmokeExamples | None,
    limits: ProbeLimits | None = None,
    accepted: set[str] | None = None,
    cache: ProbeCache | None = None,
) -> None:
    """Have a child process load and probe `files`, unless one already accepted them.

    `accepted` holds the digests this process saw accepted; the ProbeCache,
    what children on this machine accepted with the same examples and limits.
    Limits and cache default to the environment's, for callers that read no settings.
    """
    if accepted is not None and files.digest in accepted:
        return
    limits = limits or ProbeLimits.from_env()
    cache = cache or ProbeCache.from_env()
    key = cache.key(files.digest, examples, limits)
    if not cache.holds(key):
        digest = probe(files.model_dir, files.feature_schema, examples, limits)
        if digest != files.digest:
            raise RefusedModel(f"the probe accepted other bytes ({digest[:19]}…) than were verified")
        cache.add(key)
    if accepted is not None:
        accepted.add(files.digest)


def check_release(
    client: MlflowClient,
    name: str,
    mv: ModelVersion,
    dst: Path,
    verify_key: Ed25519PublicKey | None,
    require_smoke: bool = True,
    limits: ProbeLimits | None = None,
    load: bool = True,
    accepted: set[str] | None = None,
    cache: ProbeCache | None = None,
) -> Verified:
    """May version `mv` serve, and if not, why: the one release check.

    Fetches its artifact into `dst` as it is now and recomputes the digest;
    checks the format, the verdicts (gate, smoke unless `require_smoke` is
    off), their signatures against `verify_key`, the digest smoke tested, and
    the record of its published image, all before anything is loaded; has a
    child process load and probe it; then loads the same bytes (`load=False`:
    a caller that only decides, such as promote, loads nothing itself).
    RefusedVersion with the reason otherwise. Behind the API, score, promote,
    rollback, publish, smoke and the gate's view of production.
    """
    version = str(mv.version)
    # MLflow types a version's run id `str | None`; versions here are registered from runs. A cast, not a
    # check: what is passed on is unchanged.
    run_id = cast(str, mv.run_id)
    try:
        files = fetch_version_files(client, name, version, run_id, dst)
        why = refusal(
            mv.tags,
            model=name,
            version=version,
            run_id=run_id,
            digest=files.digest,
            verify_key=verify_key,
            require_smoke=require_smoke,
        )
        why = why or image_refusal(mv.tags, verify_key, model=name, version=version, run_id=run_id)
        if why:
            raise RefusedVersion(version, why)
        examples = stored_examples(client, run_id)
        if not load:
            probed(files, examples, limits, accepted, cache)
            return Verified(files, None, examples)
        return Verified(files, load_probed(files, examples, limits, accepted, cache), examples)
    except RefusedModel as exc:
        raise RefusedVersion(version, str(exc)) from None
    except (MlflowException, FileNotFoundError) as exc:
        if isinstance(exc, MlflowException) and not is_not_found(exc):
            raise  # the store itself failed: exit 3, not a verdict on the version
        raise RefusedVersion(version, f"artifact cannot be read: {exc}") from None
