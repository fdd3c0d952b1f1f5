"""Child processes: a free port, waiting for one to answer, stopping one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

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
            # Another process may answer on a port handed out twice (free_port races other processes): only an
            # answer from `process` (or its children) counts; a child that could not bind exits, caught above.
            if httpx.get(url, timeout=2).status_code == 200 and (process is None or listens(process.pid, url)):
                return
        time.sleep(0.2)
    raise CheckFailed(f"{url} did not answer 200 within {timeout_s:.0f}s")


def listens(pid: int, url: str) -> bool:
    """Whether `pid` or one of its descendants holds the listening socket of `url`'s port (True where /proc is not)."""
    proc = Path("/proc")
    port = urlsplit(url).port
    if port is None or not (proc / "net" / "tcp").exists():
        return True
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    return any(_holds(holder, inodes) for holder in _family(pid))


def _family(pid: int) -> set[int]:
    """`pid` and every process descended from it."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    family, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return family


def _holds(pid: int, inodes: set[str]) -> bool:
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False
