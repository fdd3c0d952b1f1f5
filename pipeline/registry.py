"""MLflow Model Registry adapter: versions, tags, aliases and the alias history."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.artifacts import METRIC_TAG_PREFIX as METRIC_PREFIX
from pipeline.errors import CheckFailed, ConfigError
from pipeline.policy import VersionState
from pipeline.provenance import actor, git_sha, now

HISTORY_PREFIX = "alias_history."
METRICS = ("f1", "precision", "recall", "roc_auc", "accuracy")


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: str | None
    to_version: str
    at: str
    reason: str
    git_sha: str
    by: str

    def to_json(self) -> dict:
        out = asdict(self)
        out["from"], out["to"] = out.pop("from_version"), out.pop("to_version")
        return out


def registered_model(client: MlflowClient, name: str):
    """The registered model, or None when it does not exist (one registry call)."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def model_exists(client: MlflowClient, name: str) -> bool:
    return registered_model(client, name) is not None


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Every alias of the model and the version it points at."""
    model = registered_model(client, name)
    return {} if model is None else {alias: str(version) for alias, version in model.aliases.items()}


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None."""
    return aliases(client, name).get(alias)


def versions(client: MlflowClient, name: str) -> list:
    """All versions of a model, oldest first."""
    if not model_exists(client, name):
        return []
    found = client.search_model_versions(f"name='{name}'")
    return sorted(found, key=lambda v: int(v.version))


def get_version(client: MlflowClient, name: str, version: str):
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise CheckFailed(f"model {name!r} has no version {version}") from None
        raise


def version_state(mv) -> VersionState:
    tags = mv.tags
    return VersionState(
        version=str(mv.version),
        gate=tags.get("gate", "pending"),
        smoke=tags.get("smoke", "pending"),
        baseline=tags.get("gate.baseline_version") or None,
    )


def register(client: MlflowClient, name: str, run_id: str, candidate_alias: str) -> tuple[str, bool]:
    """Register the run's model (once) and point the candidate alias at it.

    Returns (version, created). Re-running for the same run returns the version
    registered the first time.
    """
    run = client.get_run(run_id)
    gate = run.data.tags.get("gate", "pending")
    if gate != "passed":
        raise CheckFailed(f"run {run_id} has gate result {gate!r}: only runs that passed the gate are registered")
    if not model_exists(client, name):
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    created = not existing
    if existing:
        version = str(min(int(v.version) for v in existing))
    else:
        tags = {
            "gate": "passed",
            "gate.baseline_version": run.data.tags.get("gate.baseline_version", ""),
            "git_sha": run.data.tags.get("git_sha", "unknown"),
            "data.fingerprint": run.data.tags.get("data.fingerprint", ""),
            "data.rows": run.data.tags.get("data.rows", ""),
            **{f"{METRIC_PREFIX}{k}": str(v) for k, v in run.data.metrics.items() if k in METRICS},
        }
        model_id = run.data.tags.get("model_id")
        if not model_id:
            raise ConfigError(f"run {run_id} has no logged model (tag model_id missing)")
        mv = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id
        )
        version = str(mv.version)
    move_alias(client, name, candidate_alias, version, reason=f"registered from run {run_id}")
    return version, created


def record_smoke(client: MlflowClient, name: str, version: str, passed: bool, target: str, detail: str) -> None:
    """Store a smoke verdict on the version; the latest verdict wins."""
    for key, value in {
        "smoke": "passed" if passed else "failed",
        "smoke.at": now(),
        "smoke.target": target,
        "smoke.detail": detail[:5000],
    }.items():
        client.set_model_version_tag(name, version, key, value)


def move_alias(client: MlflowClient, name: str, alias: str, version: str, reason: str) -> AliasMove | None:
    """Point `alias` at `version` and record the move; None when it already pointed there."""
    before = alias_version(client, name, alias)
    if before == version:
        return None
    client.set_registered_model_alias(name, alias, version)
    move = AliasMove(alias, before, version, now(), reason, git_sha(), actor())
    # One tag per move, keyed by time plus a random suffix, so concurrent
    # writers never overwrite each other and nothing is ever deleted.
    key = f"{HISTORY_PREFIX}{time.time_ns():020d}.{secrets.token_hex(3)}"
    client.set_registered_model_tag(name, key, json.dumps(move.to_json(), sort_keys=True))
    return move


def history(client: MlflowClient, name: str) -> list[dict]:
    """Every recorded alias move, oldest first."""
    model = registered_model(client, name)
    return [] if model is None else history_of(model.tags)


def history_of(tags: dict[str, str]) -> list[dict]:
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]


def require_model(client: MlflowClient, name: str) -> None:
    if not model_exists(client, name):
        raise ConfigError(f"model {name!r} is not registered in this tracking store")
