"""`python -m api`: run `api.app:app` under uvicorn on $HOST:$PORT (the image's entry point).

`WEB_CONCURRENCY` workers (default 1). With more than one, or with METRICS_PORT
set, Prometheus samples go to `PROMETHEUS_MULTIPROC_DIR` (a fresh temporary
directory unless set), which is emptied here, before the workers start, so no
dead process's counts linger.

METRICS_PORT: /metrics is served on that port, and only there (the public port
answers 404), by a listener in this process: the supervisor when several
workers serve, the one worker otherwise. It reads every worker's files, so it
sums them all; a worker hands its counts to the files every second, so a scrape
sees answers up to a second old. Unset: each worker serves /metrics on the
public port, as before.

Settings are read and checked before anything starts (api/settings.py: the
HTTP limits MAX_HEADER_BYTES, HEADER_TIMEOUT_S, BODY_TIMEOUT_S,
KEEP_ALIVE_TIMEOUT_S and MAX_BODY_BYTES_IN_FLIGHT, METRICS_PORT, the secrets'
`change-me` placeholders, ...): a bad one stops the start, exit 2, with one
line naming it. Each worker reads them again as it starts (the same environment).
"""

import os
import sys
import tempfile

# One OpenMP thread per process unless the operator says otherwise, set before any library starts its pool: a
# request is too small to split (HistGradientBoosting and LightGBM predict with OpenMP), the workers already use
# the cores, and on a busy machine spinning threads made one-record p99 tens of times worse
# (benchmarks/family_speed.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import uvicorn

from api.settings import SettingsError, current, share_metrics_through  # no prometheus_client before it is set


def prepare_multiprocess_dir(configured: str | None) -> str:
    """Create (or empty) the directory the workers share their metrics through (`configured`, else a fresh one)."""
    path = configured or tempfile.mkdtemp(prefix="api-metrics-")
    os.makedirs(path, exist_ok=True)
    for entry in os.scandir(path):
        if entry.is_file() and entry.name.endswith(".db"):  # only prometheus_client's own files
            os.remove(entry.path)
    share_metrics_through(path)  # the workers inherit it
    return path


def serve_metrics(port: int, host: str) -> None:
    """Serve every worker's metrics (their shared files) on `port`, from a thread of this process."""
    # Imported only now: prometheus_client picks file-backed values at import, once the directory is in the env.
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)


def main() -> None:
    """Run the app under uvicorn with the HTTP limits, in WEB_CONCURRENCY workers."""
    try:
        settings = current()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    from api.http_protocol import PROTOCOL

    if settings.web_concurrency > 1 or settings.shared_metrics or settings.metrics_port:
        prepare_multiprocess_dir(settings.multiproc_dir)  # set before the workers start: they inherit it
    if settings.metrics_port:
        serve_metrics(settings.metrics_port, settings.host)
    uvicorn.run(
        "api.app:app",
        host=settings.host,
        port=settings.port,
        workers=settings.web_concurrency,
        access_log=False,
        http=PROTOCOL,  # by path: each worker process imports it and reads its settings once (current())
        # uvicorn annotates int, but only hands it to loop.call_later as seconds: a float works.
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
