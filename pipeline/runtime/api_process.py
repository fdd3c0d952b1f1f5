"""Start the prediction API as a real process (`python -m api`), for smoke tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import CheckFailed
from pipeline.runtime.processes import free_port, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def uvicorn_process(env: dict[str, str], port: int | None = None, startup_timeout_s: float = 60) -> Iterator[str]:
    """Run `python -m api` (the image's entry point) on a free loopback port; yields its URL and always stops it.

    A free port can be handed to another process before ours binds it: ours then exits "address already in
    use", and it starts again on another port (twice at most).
    """
    for attempt in range(3):
        chosen = port or free_port()
        log = tempfile.NamedTemporaryFile(prefix="api-", suffix=".log", delete=False)  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "api"],
            env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(chosen), "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{chosen}"
        try:
            try:
                wait_for(url + "/health", startup_timeout_s, process)
            except CheckFailed as exc:  # say why it did not start, from its own log
                tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-10:]
                if port is None and attempt < 2 and any("address already in use" in line for line in tail):
                    continue
                raise CheckFailed(f"{exc}; its log ends:\n" + "\n".join(tail)) from None
            yield url
            return
        finally:
            stop(process)
            log.close()
            Path(log.name).unlink(missing_ok=True)
