"""Child processes: a free port, waiting for one to answer, stopping one."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

import httpx

from pipeline.core.errors import CheckFailed


def free_port() -> int:
    """A loopback TCP port free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()


def wait_for(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
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
