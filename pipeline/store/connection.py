"""The one tracking connection: resolved once, checked once, passed explicitly (no MLflow global state).

Light: every command needs it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import httpx
from mlflow.tracking import MlflowClient

from api.release.redact import redact
from pipeline.core.config import Params
from pipeline.core.environment import PipelineEnv
from pipeline.core.errors import InfrastructureError


def tracking_uri(params: Params, env: PipelineEnv) -> str:
    """MLFLOW_TRACKING_URI in the environment wins over params.yaml."""
    return env.tracking_uri or params.registry.tracking_uri


@dataclass(frozen=True)
class TrackingStore:
    """A tracking store: its URI (as configured, credentials included) and a client bound to it."""

    uri: str
    client: MlflowClient

    @property
    def is_server(self) -> bool:
        """Whether the store is a tracking server (HTTP, HTTPS or Databricks), not a local database or folder."""
        return urlparse(self.uri).scheme in ("http", "https", "databricks")


def connect(params: Params, env: PipelineEnv) -> TrackingStore:
    """The tracking store of `params` (MLFLOW_TRACKING_URI wins), failing fast (exit 3) if a server is down."""
    uri = tracking_uri(params, env)
    return TrackingStore(uri, client_for(uri))


def client_for(uri: str) -> MlflowClient:
    """A client for one tracking store; a server is asked for /health first (5 s)."""
    if urlparse(uri).scheme in ("http", "https"):
        try:
            httpx.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except httpx.HTTPError as exc:
            raise InfrastructureError(f"MLflow tracking server {redact(uri)} is not reachable: {redact(exc)}") from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
