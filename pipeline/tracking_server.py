"""Start a real `mlflow server` (sqlite or another backend store, proxied artifacts)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import CheckFailed
from pipeline.processes import free_port, stop, wait_for


def tracking_server_command(directory: Path, port: int, backend_store_uri: str | None = None) -> list[str]:
    """`mlflow server` with a sqlite store (or the given backend) and proxied artifacts under `directory`."""
    backend = backend_store_uri or f"sqlite:///{directory / 'mlflow.db'}"
    return [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
        "--artifacts-destination", str(directory / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def start_tracking_server(directory: Path, port: int | None = None, backend_store_uri: str | None = None):
    """Start a detached `mlflow server` (it outlives this process); returns (url, process)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    with open(directory / "server.log", "ab") as log:
        process = subprocess.Popen(
            tracking_server_command(directory, port, backend_store_uri),
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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


@contextlib.contextmanager
def tracking_server(directory: Path, backend_store_uri: str | None = None) -> Iterator[str]:
    """A real `mlflow server` for the duration of a block (tests, benchmarks)."""
    url, process = start_tracking_server(directory, backend_store_uri=backend_store_uri)
    try:
        yield url
    finally:
        stop(process)
