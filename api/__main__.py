"""`python -m api`: run `api.app:app` under uvicorn on $HOST:$PORT (the image's entry point).

`WEB_CONCURRENCY` workers (default 1). With more than one, Prometheus samples
go to `PROMETHEUS_MULTIPROC_DIR` (a fresh temporary directory unless set), which
is emptied here, before the workers start, so no dead process's counts linger.

HTTP limits (api/http_limits.py): MAX_HEADER_BYTES, HEADER_TIMEOUT_S,
BODY_TIMEOUT_S, KEEP_ALIVE_TIMEOUT_S. A bad value stops the start with one line
naming the variable.
"""

import os
import sys
import tempfile
from collections.abc import MutableMapping

import uvicorn

from api.metrics import MULTIPROC_DIR  # read by prometheus_client in each worker
from api.settings import SettingsError


def prepare_multiprocess_dir(env: MutableMapping[str, str] = os.environ) -> str:
    """Create (or empty) the directory the workers share their metrics through; return its path."""
    path = env.get(MULTIPROC_DIR) or tempfile.mkdtemp(prefix="api-metrics-")
    os.makedirs(path, exist_ok=True)
    for entry in os.scandir(path):
        if entry.is_file() and entry.name.endswith(".db"):  # only prometheus_client's own files
            os.remove(entry.path)
    env[MULTIPROC_DIR] = path
    return path


def main() -> None:
    """Run the app under uvicorn with the HTTP limits, in WEB_CONCURRENCY workers."""
    try:  # the limits are read when the module is imported, here and again in each worker
        from api.http_limits import LIMITS, PROTOCOL
    except SettingsError as exc:
        sys.exit(str(exc))
    workers = int(os.environ.get("WEB_CONCURRENCY") or 1)
    if workers > 1 or os.environ.get(MULTIPROC_DIR):
        prepare_multiprocess_dir()  # set before the workers start: they inherit it
    uvicorn.run(
        "api.app:app",
        host=os.environ.get("HOST", "0.0.0.0"),  # a container listens on all its interfaces
        port=int(os.environ.get("PORT", "8000")),
        workers=workers,
        access_log=False,
        http=PROTOCOL,  # by path: each worker process imports it (and reads the limits) itself
        # uvicorn annotates int, but only hands it to loop.call_later as seconds: a float works.
        timeout_keep_alive=LIMITS.keep_alive_timeout_s,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
