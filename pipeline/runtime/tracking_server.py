"""Start a real `mlflow server` (sqlite or another backend store, proxied artifacts)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict, Unpack

from pipeline.core.errors import CheckFailed
from pipeline.runtime.processes import free_port, stop, wait_for


def tracking_server_command(
    directory: Path,
    port: int,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    app_name: str | None = None,
) -> list[str]:
    """`mlflow server` with proxied artifacts: a sqlite store and artifacts under `directory` unless given.

    `artifacts_destination` may be s3://BUCKET/PATH (with MLFLOW_S3_ENDPOINT_URL for
    MinIO and the like); `app_name="basic-auth"` turns on MLflow's authentication.
    """
    backend = backend_store_uri or f"sqlite:///{directory / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
        "--artifacts-destination", artifacts_destination or str(directory / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    return [*command, "--app-name", app_name] if app_name else command


def start_tracking_server(
    directory: Path,
    port: int | None = None,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    app_name: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a detached `mlflow server` (it outlives this process); returns (url, process).

    `env` adds variables the server reads (S3 keys, MLFLOW_AUTH_CONFIG_PATH).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = tracking_server_command(directory, port, backend_store_uri, artifacts_destination, app_name)
    with open(directory / "server.log", "ab") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a CI step may end; the server must not end with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/health", 120, process)
    except CheckFailed:
        process.kill()
        raise
    (directory / "server.pid").write_text(str(process.pid))
    return url, process


class ServerOptions(TypedDict, total=False):
    """The other options of start_tracking_server."""

    port: int | None
    artifacts_destination: str | None
    app_name: str | None
    env: dict[str, str] | None


@contextlib.contextmanager
def tracking_server(
    directory: Path, backend_store_uri: str | None = None, **options: Unpack[ServerOptions]
) -> Iterator[str]:
    """A real `mlflow server` for the duration of a block (tests, benchmarks); options as start_tracking_server."""
    url, process = start_tracking_server(directory, backend_store_uri=backend_store_uri, **options)
    try:
        yield url
    finally:
        stop(process)
