"""Service configuration, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# A number read from the environment: an int or a float, as its default is.
N = TypeVar("N", int, float)

# MLflow retries a dead server for minutes by default; a reload attempt (or a CI step) should give up in seconds.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def apply_mlflow_http_defaults(env: MutableMapping[str, str] | None = None) -> None:
    """Set MLflow's HTTP retry and timeout defaults, leaving any value already in the environment."""
    env = os.environ if env is None else env
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        env.setdefault(name, value)


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    """What the service serves (model, alias or pinned version) and the limits it serves under."""

    model_name: str = "churn-classifier"
    model_alias: str = "production"
    model_version: str | None = None  # pins one version; no alias polling
    # SMOKE_TEST_VERSION, set only by the smoke stage: the pinned version may serve before its smoke verdict exists.
    smoke_test_version: str | None = None
    reload_interval_s: float = 10.0
    max_batch_size: int = 10_000
    max_body_bytes: int = 20 * 1024 * 1024  # MAX_BODY_BYTES: larger bodies get 413 before they are parsed
    verify_key_pem: str | None = None  # RELEASE_VERIFY_KEY: only versions with verified verdicts serve

    canary_alias: str = "canary"  # CANARY_ALIAS: followed beside the production alias during a rollout
    # ENTITY_ID_FIELD: a record field naming the customer (not a feature): a canary split keeps one customer on one
    # version. Records may carry it; it is never predicted on. Unset: the split is by X-Request-Id, else random.
    entity_id_field: str | None = None
    shadow_queue: int = 1000  # SHADOW_QUEUE: copies in flight to the shadow scorer; past it copies are dropped

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings in the environment (or `env`), defaults where unset; SettingsError names a bad value."""
        env = os.environ if env is None else env
        return cls(
            model_name=env.get("MODEL_NAME", cls.model_name),
            model_alias=env.get("MODEL_ALIAS", cls.model_alias),
            model_version=env.get("MODEL_VERSION") or None,
            smoke_test_version=env.get("SMOKE_TEST_VERSION") or None,
            reload_interval_s=_number(env, "RELOAD_INTERVAL_S", cls.reload_interval_s, float),
            max_batch_size=_number(env, "MAX_BATCH_SIZE", cls.max_batch_size, int),
            max_body_bytes=_number(env, "MAX_BODY_BYTES", cls.max_body_bytes, int),
            verify_key_pem=env.get("RELEASE_VERIFY_KEY") or None,
            canary_alias=env.get("CANARY_ALIAS", cls.canary_alias),
            entity_id_field=env.get("ENTITY_ID_FIELD") or None,
            shadow_queue=_number(env, "SHADOW_QUEUE", cls.shadow_queue, int),
        )

    def verify_key(self) -> Ed25519PublicKey | None:
        """The public key verdicts must verify against, or None (unsigned mode)."""
        if not self.verify_key_pem:
            return None
        from api.release.verdicts import BadKey, load_verify_key

        try:
            return load_verify_key(self.verify_key_pem)
        except BadKey as exc:
            raise SettingsError(str(exc)) from None

    @property
    def requires_smoke(self) -> bool:
        """Every replica serves only smoke-tested versions, but the one the smoke stage starts to test it."""
        return not (self.model_version and self.model_version == self.smoke_test_version)

    @property
    def target(self) -> str:
        """What this replica serves: `name/version` when pinned, else `name@alias`."""
        return (
            f"{self.model_name}/{self.model_version}" if self.model_version else f"{self.model_name}@{self.model_alias}"
        )


def _number(env: Mapping[str, str], name: str, default: N, kind: type[N]) -> N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be positive")
    return value
