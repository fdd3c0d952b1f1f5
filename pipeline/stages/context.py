"""What every stage starts from: params, one tracking connection and the release keys, opened once."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release.check import RefusedVersion, check_release
from pipeline.core import release_keys
from pipeline.core.config import Params, RegistryParams
from pipeline.core.errors import ConfigError
from pipeline.store import connection, registry
from pipeline.store.connection import Tracking


@dataclass(frozen=True)
class Context:
    """A stage's params, its tracking store and the release keys (None: unsigned)."""

    params: Params
    tracking: Tracking
    signing_key: Ed25519PrivateKey | None
    verify_key: Ed25519PublicKey | None

    @classmethod
    def open(cls, params: Params) -> Context:
        """Connect (failing fast, exit 3, when the server is down) and read the keys (exit 2 when malformed)."""
        return cls(params, connection.connect(params), release_keys.signing_key(), release_keys.verify_key())

    @property
    def client(self) -> MlflowClient:
        """The tracking store's client."""
        return self.tracking.client

    @property
    def registry(self) -> RegistryParams:
        """The registry section of the params."""
        return self.params.registry

    @property
    def model(self) -> str:
        """The registered model's name."""
        return self.params.registry.model_name

    def run(self, run_id: str) -> Run:
        """The run, or ConfigError (exit 2) naming it."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            raise ConfigError(f"run {run_id!r} not found in the tracking store: {exc.message}") from None

    def version(self, version: str) -> ModelVersion:
        """The model version, or CheckFailed (exit 1) naming it."""
        return registry.get_version(self.client, self.model, version)

    def candidate(self) -> str:
        """The version the candidate alias points at; ConfigError when it points at nothing."""
        version = registry.alias_version(self.client, self.model, self.registry.candidate_alias)
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
