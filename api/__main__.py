"""`python -m api`: run `api.app:app` under uvicorn on $HOST:$PORT (the image's entry point).

`WEB_CONCURRENCY` workers (default 1). With more than one, Prometheus samples
go to `PROMETHEUS_MULTIPROC_DIR` (a fresh temporary directory unless set), which
is emptied here, before the workers start, so no dead process's counts linger.
"""

import os
import tempfile

import uvicorn

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client in each worker


def prepare_multiprocess_dir(env=os.environ) -> str:
    """Create (or empty) the directory the workers share their metrics through; return its path."""
    path = env.get(MULTIPROC_DIR) or tempfile.mkdtemp(prefix="api-metrics-")
    os.makedirs(path, exist_ok=True)
    for entry in os.scandir(path):
        if entry.is_file() and entry.name.endswith(".db"):  # only prometheus_client's own files
            os.remove(entry.path)
    env[MULTIPROC_DIR] = path
    return path


def main() -> None:
    workers = int(os.environ.get("WEB_CONCURRENCY") or 1)
    if workers > 1 or os.environ.get(MULTIPROC_DIR):
        prepare_multiprocess_dir()  # set before the workers start: they inherit it
    uvicorn.run(
        "api.app:app",
        host=os.environ.get("HOST", "0.0.0.0"),  # a container listens on all its interfaces
        port=int(os.environ.get("PORT", "8000")),
        workers=workers,
        access_log=False,
    )


if __name__ == "__main__":
    main()
