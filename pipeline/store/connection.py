"""Connect to the tracking store, failing fast when it is down. Light: every command needs it first."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import httpx
import mlflow
from mlflow.tracking import MlflowClient

from api.release.redact import redact
from pipeline.core.config import Params
from pipeline.core.errors import InfrastructureError


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI in the environment wins over params.yaml."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri


def connect(params: Params) -> MlflowClient:
    """Point MLflow at the tracking store, failing fast (exit 3) if a server is down."""
    uri = tracking_uri(params)
    client = client_for(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return client


def client_for(uri: str) -> MlflowClient:
    """A client for one tracking store; a server is asked for /health first (5 s)."""
    if urlparse(uri).scheme in ("http", "https"):
        try:
            httpx.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except httpx.HTTPError as exc:
            raise InfrastructureError(f"MLflow tracking server {redact(uri)} is not reachable: {redact(exc)}") from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
