"""Start the prediction API as a real uvicorn process, for smoke tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from pipeline.errors import CheckFailed

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_process(env: dict[str, str], port: int | None = None, startup_timeout_s: float = 60) -> Iterator[str]:
    """Run `python -m api` (the image's entry point) on a free loopback port; yields its URL and always stops it."""
    port = port or free_port()
    log = tempfile.NamedTemporaryFile(prefix="api-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "api"],
        env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port), "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(url + "/health", startup_timeout_s, process)
        except CheckFailed as exc:  # say why it did not start, from its own log
            tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-10:]
            raise CheckFailed(f"{exc}; its log ends:\n" + "\n".join(tail)) from None
        yield url
    finally:
        stop(process)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def stop(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; CheckFailed if `process` dies first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise CheckFailed(f"the process exited with code {process.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise CheckFailed(f"{url} did not answer 200 within {timeout_s:.0f}s")


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
