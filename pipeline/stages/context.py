"""What every stage starts from: params, the environment, one tracking connection and the release keys, read once."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release.check import RefusedVersion, check_release
from pipeline.core import release_keys
from pipeline.core.config import Params, RegistryParams
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import ConfigError
from pipeline.store import alias_moves, connection, model_versions
from pipeline.store.connection import TrackingStore


@dataclass(frozen=True)
class Context:
    """A stage's params, its tracking store and client, the release keys (None: unsigned) and the environment."""

    params: Params
    tracking: TrackingStore
    signing_key: Ed25519PrivateKey | None
    verify_key: Ed25519PublicKey | None
    env: PipelineEnv  # the environment's settings, read once
    client: MlflowClient = field(init=False)  # the tracking store's client
    registry: RegistryParams = field(init=False)  # the registry section of the params
    model: str = field(init=False)  # the registered model's name

    def __post_init__(self) -> None:
        # Plain fields, not properties: stages read them at every step.
        object.__setattr__(self, "client", self.tracking.client)
        object.__setattr__(self, "registry", self.params.registry)
        object.__setattr__(self, "model", self.params.registry.model_name)

    @classmethod
    def open(cls, params: Params, env: PipelineEnv | None = None) -> Context:
        """Read the environment (unless given), connect and read the keys.

        Fails fast (exit 3) when the tracking server is down, exit 2 when a key is malformed.
        """
        env = env or PipelineEnv.read()
        tracking = connection.connect(params, env)
        return cls(params, tracking, release_keys.signing_key(env), release_keys.verify_key(env), env)

    def run(self, run_id: str) -> Run:
        """The run, or ConfigError (exit 2) naming it."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            raise ConfigError(f"run {run_id!r} not found in the tracking store: {exc.message}") from None

    def version(self, version: str) -> ModelVersion:
        """The model version, or CheckFailed (exit 1) naming it."""
        return model_versions.get_version(self.client, self.model, version)

    def candidate(self) -> str:
        """The version the candidate alias points at; ConfigError when it points at nothing."""
        version = alias_moves.alias_version(self.client, self.model, self.registry.candidate_alias)
        if version is None:
            raise ConfigError(f"no --version given and @{self.registry.candidate_alias} points at nothing")
        return version

    def release_refusal(self, mv: ModelVersion, require_smoke: bool = True) -> tuple[str | None, str | None]:
        """(digest, None) when `mv` may be released, else (None, why): the one release check, loading nothing here."""
        with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
            try:
                verified = check_release(
                    self.client, self.model, mv, Path(tmp), self.verify_key, require_smoke, load=False
                )
            except RefusedVersion as exc:
                return None, exc.reason
        return verified.files.digest, None
