"""Benchmark: what the prediction log costs one-record /predict throughput, log off against log on, in one run.

Usage (from the project root; needs wrk):
    .venv/bin/python benchmarks/prediction_log.py [--duration 10] [--rounds 3] [--connections 8]

Two APIs serve the conftest-sized model (generate_churn(800, 3), the default
model type; tests/api/conftest.py), one uvicorn worker each with the project's
HTTP protocol, on loopback: "off" without PREDICTION_LOG_URI, "on" logging to a
temporary folder with the default flush (every 2 s) and bound. wrk (2 threads,
pinned to CPU 0 as in benchmarks/serve_vs_mlflow.py) posts one one-record body,
rounds alternating (off, on, on, off, ...) so a busier moment weighs on both;
medians compared, with the server's CPU time per answer (read from /proc
around each round: steadier than req/s on a shared machine). The "on" side's /metrics must show every answer written and
none dropped, or the run fails: a side that silently did not log cannot pass.

Goal (issue 30): the log costs at most 5 % of one-record throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the project's packages and the sibling benchmarks

from serve_vs_mlflow import wrk  # noqa: E402

from pipeline.core.errors import CheckFailed  # noqa: E402
from pipeline.runtime.processes import free_port, stop, wait_for  # noqa: E402

MAX_DROP = 0.05  # one-record req/s with the log on, at most this far below off


def serve(port: int) -> None:
    """The server side (a child process): the model, the app with PREDICTION_LOG_URI from the environment."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import uvicorn

    from api.app import create_app
    from api.holder import ModelHolder
    from api.http_protocol import PROTOCOL
    from api.settings import Settings

    app = create_app(ModelHolder(model=_model()[0]), Settings.from_env())
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, http=PROTOCOL, log_level="warning")


def _model():
    from pipeline.core.churn_data import generate_churn
    from pipeline.core.config import DataParams, ModelParams
    from pipeline.core.data import prepare
    from pipeline.core.train import train
    from tests.api.conftest import make_model

    result = train(prepare(generate_churn(800, 3).astype(str), DataParams()), ModelParams(), test_size=0.25, seed=3)
    return make_model(result), json.loads(result.split.X_test.head(1).to_json(orient="records"))


@contextlib.contextmanager
def api(log: Path | None) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DECISION_CLIENT_BUDGET": "1000000"}
    env.pop("PREDICTION_LOG_URI", None)
    if log is not None:
        env["PREDICTION_LOG_URI"] = str(log)
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(url + "/ready", 180, process)
        except CheckFailed as exc:
            tail = (process.stderr.read() if process.poll() is not None and process.stderr else b"").decode()
            raise SystemExit(f"the API did not start: {exc}\n{tail[-2000:]}") from None
        yield url, process.pid
    finally:
        stop(process)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counter(url: str, name: str) -> float:
    found = re.search(rf"^{name} ([\d.e+]+)$", httpx.get(url + "/metrics", timeout=10).text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (alternating)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    _, records = _model()
    body = json.dumps({"records": records})
    folder = Path(tempfile.mkdtemp(prefix="prediction-log-"))
    figures: dict[str, list[dict]] = {"off": [], "on": []}
    try:
        with api(None) as (off, off_pid), api(folder) as (on, on_pid):
            urls, pids = {"off": off, "on": on}, {"off": off_pid, "on": on_pid}
            for url in urls.values():  # warm both (first answers build caches)
                for _ in range(200):
                    httpx.post(url + "/predict", content=body)
            for round_ in range(args.rounds):
                order = ["off", "on"] if round_ % 2 == 0 else ["on", "off"]
                for side in order:
                    cpu = cpu_seconds(pids[side])
                    result = wrk(urls[side] + "/predict", body, args.duration, args.connections)
                    # The server's CPU per answer: steadier than req/s on a shared machine (the log's flushes
                    # are in it: their thread is the server's).
                    result["cpu_us"] = (cpu_seconds(pids[side]) - cpu) / (result["rps"] * args.duration) * 1e6
                    if result["errors"]:
                        raise SystemExit(f"{side}: wrk saw {result['errors']} non-2xx answers")
                    figures[side].append(result)
                    print(f"round {round_ + 1} {side:3}: {result['rps']:8.0f} req/s, p99 {result['p99_ms']:7.2f} ms, "
                          f"{result['cpu_us']:6.1f} µs CPU per answer", flush=True)  # fmt: skip
            answered = counter(on, r'api_requests_total\{endpoint="/predict",status="200",version="7"\}')
            wait_for_written(on, answered)
            written = counter(on, "prediction_log_written_total")
            dropped = counter(on, "prediction_log_dropped_total")
            failures = counter(on, "prediction_log_flush_failures_total")
        segments = len(list(folder.rglob("*.parquet")))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    med = {side: statistics.median(r["rps"] for r in runs) for side, runs in figures.items()}
    p99 = {side: statistics.median(r["p99_ms"] for r in runs) for side, runs in figures.items()}
    cpu = {side: statistics.median(r["cpu_us"] for r in runs) for side, runs in figures.items()}
    drop = 1 - med["on"] / med["off"]
    rounds = f"medians of {args.rounds} rounds of {args.duration} s"
    print(f"\none-record /predict, {args.connections} connections, {rounds}")
    print(f"{'log':6}{'req/s':>10}{'p99 ms':>9}{'CPU µs/answer':>15}")
    for side in ("off", "on"):
        print(f"{side:6}{med[side]:>10.0f}{p99[side]:>9.2f}{cpu[side]:>15.1f}")
    print(f"log on: {written:.0f} rows written in {segments} segments, {dropped:.0f} dropped, "
          f"{failures:.0f} failed flushes")  # fmt: skip
    print(f"CPU per answer with the log on: {cpu['on'] / cpu['off'] - 1:+.1%} (throughput a saturated worker loses)")
    met = drop <= MAX_DROP and dropped == 0 and failures == 0 and written >= answered > 0
    print(f"throughput drop with the log on: {drop:+.1%} (goal: at most {MAX_DROP:.0%}): {'met' if met else 'NOT met'}")
    return 0 if met else 1


def wait_for_written(url: str, answered: float, within_s: float = 30) -> None:
    """Until the log has written every answer (it flushes every 2 s), or the time is up."""
    import time

    deadline = time.monotonic() + within_s
    while counter(url, "prediction_log_written_total") < answered and time.monotonic() < deadline:
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
