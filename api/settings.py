"""The service's settings, declared once: what it serves, the limits it serves under, how it runs.

Read from the environment once at start-up (`Settings.from_env()`, through
pydantic-settings: api/release/env_settings.py) and passed down; no other
module of the API reads the environment for a setting. Each field's validation
alias is its variable, as README.md names it. A bad value, or a secret still
holding env.example's `change-me` placeholder, raises SettingsError: one line
naming the variable (`python -m api` prints it and exits 2).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Self

from pydantic import Field, field_validator, model_validator

from api.body_budget import LARGE_SHARE
from api.release.env_settings import ProbeSettings, SettingsError
from api.release.redact import redact

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from api.release.load_probe import ProbeCache, ProbeLimits

__all__ = ["Settings", "SettingsError", "apply_mlflow_http_defaults", "refuse_placeholders", "share_metrics_through"]

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


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # where the workers' metrics meet (api/metrics.py)


def share_metrics_through(path: str) -> None:
    """Name the workers' metrics directory in the environment, which prometheus_client and the workers read."""
    os.environ[MULTIPROC_DIR] = path
    current.cache_clear()  # a single worker runs in this process: its settings are read again, with the directory


# The secrets the service reads (MLflow's credentials, boto's for an S3 artifact store, the /model token), and any
# other setting named like one: env.example's `change-me` placeholders in them stop the start.
SECRET_SETTINGS = (
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MODEL_INFO_TOKEN", "OUTCOMES_TOKEN", "AWS_SECRET_ACCESS_KEY",
)  # fmt: skip
SECRET_SUFFIXES = ("_PASSWORD", "_TOKEN", "_SECRET", "_SECRET_KEY", "_SECRET_ACCESS_KEY")
PLACEHOLDER_PREFIX = "change-me"
# Text settings where an empty value means unset (None), as `VAR=` in a compose file says.
OPTIONAL_TEXT = (
    "model_version", "smoke_test_version", "verify_key_pem", "entity_id_field", "model_info_token", "multiproc_dir",
    "feature_store_url", "prediction_log_uri", "outcomes_token",
)  # fmt: skip
FEATURE_STORE_SCHEMES = ("redis://", "rediss://", "sqlite:///")
MIB = 1024 * 1024


class Settings(ProbeSettings):
    """What the service serves (model, alias or pinned version), the limits it serves under, and how it runs."""

    model_name: str = Field(default="churn-classifier", validation_alias="MODEL_NAME")
    model_alias: str = Field(default="production", validation_alias="MODEL_ALIAS")
    model_version: str | None = Field(
        default=None, validation_alias="MODEL_VERSION"
    )  # pins one version; no alias polling
    # SMOKE_TEST_VERSION, set only by the smoke stage: the pinned version may serve before its smoke verdict exists.
    smoke_test_version: str | None = Field(default=None, validation_alias="SMOKE_TEST_VERSION")
    reload_interval_s: float = Field(default=10.0, gt=0, validation_alias="RELOAD_INTERVAL_S")
    max_batch_size: int = Field(default=10_000, gt=0, validation_alias="MAX_BATCH_SIZE")
    # Larger bodies get 413 before they are parsed (api/body_limit.py).
    max_body_bytes: int = Field(default=20 * MIB, gt=0, validation_alias="MAX_BODY_BYTES")
    # Only versions with verdicts this public key verifies serve (unset: unsigned mode).
    verify_key_pem: str | None = Field(default=None, validation_alias="RELEASE_VERIFY_KEY")

    canary_alias: str = Field(
        default="canary", validation_alias="CANARY_ALIAS"
    )  # followed beside production in a rollout
    # A record field naming the customer (not a feature): a canary split keeps one customer on one version.
    # Records may carry it; it is never predicted on. Unset (or a record without one): a random draw.
    entity_id_field: str | None = Field(default=None, validation_alias="ENTITY_ID_FIELD")
    # Copies in flight to the shadow scorer; past it copies are dropped.
    shadow_queue: int = Field(default=1000, gt=0, validation_alias="SHADOW_QUEUE")
    # Proxies in front of the service that append to X-Forwarded-For. 0: the peer is the client; N: the client is
    # the N-th entry from the right (api/client_budget.py).
    trusted_proxy_hops: int = Field(default=0, ge=0, validation_alias="TRUSTED_PROXY_HOPS")
    # Requests of one client counted for release decisions per second and worker.
    decision_client_budget: int = Field(default=20, gt=0, validation_alias="DECISION_CLIENT_BUDGET")
    # A bearer token that shows the canary and its traffic on /model (unset: shown to nobody).
    model_info_token: str | None = Field(default=None, repr=False, validation_alias="MODEL_INFO_TOKEN")
    # /metrics is served on this port only (api/__main__.py), the public port answers 404 for it.
    metrics_port: int | None = Field(default=None, ge=1, validation_alias="METRICS_PORT")

    # The HTTP limits every connection of a worker is held to (api/http_protocol.py).
    max_header_bytes: int = Field(default=32 * 1024, gt=0, validation_alias="MAX_HEADER_BYTES")
    header_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False, validation_alias="HEADER_TIMEOUT_S")
    body_timeout_s: float = Field(default=60.0, gt=0, allow_inf_nan=False, validation_alias="BODY_TIMEOUT_S")
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False, validation_alias="KEEP_ALIVE_TIMEOUT_S")
    # Request body bytes one worker holds at once, over all its connections (api/body_budget.py).
    max_body_bytes_in_flight: int = Field(default=256 * MIB, gt=0, validation_alias="MAX_BODY_BYTES_IN_FLIGHT")

    # The online store a version trained from a feature service reads its records' features from, by customer id
    # (api/model/online_store.py): redis://[:password@]host:port/db or sqlite:///abs/path/online.db. Never printed
    # whole: its password is redacted wherever it is shown.
    feature_store_url: str | None = Field(default=None, repr=False, validation_alias="FEATURE_STORE_URL")
    feast_project: str = Field(default="churn", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", validation_alias="FEAST_PROJECT")
    # A lookup slower than this (connect or read) is answered 503, never awaited longer.
    feature_lookup_timeout_ms: float = Field(
        default=50.0, gt=0, le=60_000, allow_inf_nan=False, validation_alias="FEATURE_LOOKUP_TIMEOUT_MS"
    )

    # The prediction log (api/prediction_log.py): a local folder or s3://BUCKET/PREFIX (unset: no log), flushed
    # every PREDICTION_LOG_FLUSH_S; past PREDICTION_LOG_MAX_ROWS rows or PREDICTION_LOG_MAX_BYTES bytes (of the
    # strings they hold: records' JSON, ids) waiting, answers are dropped from it (counted).
    prediction_log_uri: str | None = Field(default=None, validation_alias="PREDICTION_LOG_URI")
    prediction_log_flush_s: float = Field(
        default=2.0, gt=0, le=3600, allow_inf_nan=False, validation_alias="PREDICTION_LOG_FLUSH_S"
    )
    prediction_log_max_rows: int = Field(default=100_000, gt=0, validation_alias="PREDICTION_LOG_MAX_ROWS")
    prediction_log_max_bytes: int = Field(default=64 * 2**20, gt=0, validation_alias="PREDICTION_LOG_MAX_BYTES")
    # A bearer token POST /outcomes requires (unset: the route answers 503).
    outcomes_token: str | None = Field(default=None, repr=False, validation_alias="OUTCOMES_TOKEN")

    # How `python -m api` runs: where it listens, its workers, where their metrics meet.
    host: str = Field(default="0.0.0.0", validation_alias="HOST")  # a container listens on all its interfaces
    port: int = Field(default=8000, validation_alias="PORT")
    web_concurrency: int = Field(default=1, gt=0, validation_alias="WEB_CONCURRENCY")
    multiproc_dir: str | None = Field(default=None, validation_alias=MULTIPROC_DIR)

    @field_validator(*OPTIONAL_TEXT, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.feature_store_url is not None and not self.feature_store_url.startswith(FEATURE_STORE_SCHEMES):
            raise ValueError(
                f"FEATURE_STORE_URL={redact(self.feature_store_url)!r} must start with redis://, rediss:// or "
                "sqlite:/// (an absolute path)"
            )
        if self.prediction_log_uri is not None and not _log_root_ok(self.prediction_log_uri):
            raise ValueError(
                f"PREDICTION_LOG_URI={redact(self.prediction_log_uri)!r} must be a local folder or s3://BUCKET/PREFIX"
            )
        if self.metrics_port is not None and (self.metrics_port > 65535 or self.metrics_port == self.port):
            raise ValueError(f"METRICS_PORT={str(self.metrics_port)!r} must be a port (1-65535) other than PORT")
        if self.max_body_bytes > self.max_body_bytes_in_flight * LARGE_SHARE:
            raise ValueError(
                f"MAX_BODY_BYTES_IN_FLIGHT={str(self.max_body_bytes_in_flight)!r} must be at least 8/7 of "
                f"MAX_BODY_BYTES ({self.max_body_bytes}): a body of the largest size allowed would never fit"
            )
        return self

    @classmethod
    def from_env(cls) -> Self:
        """The settings in the environment, defaults where unset; SettingsError names a bad value or a placeholder."""
        refuse_placeholders(os.environ)
        return super().from_env()

    @classmethod
    def probing_as_the_environment_says(cls, **values: Any) -> Self:
        """Settings given by hand, but the probe's (PROBE_*) as the environment has them.

        For a command that loads a version (score, a benchmark): it probes it as every release check does.
        """
        return cls(**{**ProbeSettings.from_env().model_dump(), **values})

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

    @property
    def probe_limits(self) -> ProbeLimits:
        """How long and how large a version's first load may be, in its probe child."""
        from api.release.load_probe import ProbeLimits  # its module builds the skops allow-list: scikit-learn, pandas

        return ProbeLimits.of(self)

    @property
    def probe_cache(self) -> ProbeCache:
        """Where this machine remembers what probe children accepted."""
        from api.release.load_probe import ProbeCache

        return ProbeCache.of(self)

    @property
    def shared_metrics(self) -> bool:
        """Whether the workers' samples meet in files (PROMETHEUS_MULTIPROC_DIR set): api/metrics.py."""
        return self.multiproc_dir is not None


def _log_root_ok(uri: str) -> bool:
    """Whether a prediction log root is a local folder (a path, file://) or s3://BUCKET[/PREFIX]."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return bool(uri.strip())
    return scheme == "file" or (scheme == "s3" and bool(rest.split("/", 1)[0]))


@functools.cache
def current() -> Settings:
    """This process's settings, read from the environment on first use: the protocol and the app share them."""
    return Settings.from_env()


def refuse_placeholders(env: Mapping[str, str]) -> None:
    """SettingsError naming every secret setting that still holds a `change-me` placeholder (never its value)."""
    named = [
        name
        for name, value in env.items()
        if (name in SECRET_SETTINGS or name.endswith(SECRET_SUFFIXES))
        and value.strip().lower().startswith(PLACEHOLDER_PREFIX)
    ]
    if named:
        raise SettingsError(
            f"{', '.join(sorted(named))} still hold{'s' if len(named) == 1 else ''} a {PLACEHOLDER_PREFIX!r} "
            "placeholder (env.example's): set the real secret"
        )
