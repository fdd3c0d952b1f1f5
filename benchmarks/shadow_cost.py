"""Benchmark: what shadowing a canary costs production's answers, side by side in one run.

Usage (after `make demo`, from the project root):
    .venv/bin/python benchmarks/shadow_cost.py [--duration 10] [--connections 8] [--rounds 5] [--share 1]

The same API (`python -m api`, following @production) runs twice on a copy of
the tracking store (the project's own store is never written): "shadow"
follows the canary alias, which the copy points at production's version in
shadow mode with the given share of requests copied (1 = every one, the worst
case), and "off" follows an alias that names nothing, so it never shadows.
One-record /predict under wrk at 8 connections, rounds alternating (shadow,
off, off, shadow, ...) so a busier moment weighs on both; medians compared
against the goal: shadow's p99 at most 10 % above off's. It also reads
/metrics to show the shadow copies were scored (and how many were dropped by
the bounded queue), so a side that silently did not shadow cannot pass.

Then everything on, as issue 31 checks it: a third side shadowing with the
prediction log on (PREDICTION_LOG_URI, a temporary folder), against the raw
ASGI app (benchmarks/raw_asgi_app.py, the stack's ceiling) in the same
alternating rounds, one-record and 1,000-record, as a share of the raw app's
req/s and rows/s (shown, not judged: serve_vs_mlflow.py judges the API's
goals with these features off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_vs_mlflow import raw_serve, serving, wrk  # noqa: E402

from api.release.traffic import Traffic  # noqa: E402
from pipeline.runtime.processes import free_port  # noqa: E402
from pipeline.store import alias_moves  # noqa: E402
from pipeline.store.training_runs import load_test_set  # noqa: E402

SHADOW_MAX_P99_RISE = 0.10  # production's one-record p99 at 8 connections, shadowing against not


TOKEN = "shadow-bench"  # MODEL_INFO_TOKEN of both sides


def copy_store(source: Path, folder: Path) -> str:
    """A consistent copy of the sqlite tracking store (artifacts stay where they are, only read)."""
    target = folder / "mlflow.db"
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return f"sqlite:///{target}"


def shadow_counts(url: str) -> dict[str, float]:
    """Requests an API copied to its shadow version, by outcome (scored, dropped, failed)."""
    totals: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        match = re.match(r'^api_shadow_requests_total\{.*outcome="(\w+)".*\} ([0-9.e+-]+)$', line)
        if match:
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(2))
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="churn-classifier")
    parser.add_argument("--store", default="mlflow.db", help="the sqlite tracking store to copy")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--share", type=float, default=1.0, help="share of production's requests shadowed")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not Path(args.store).is_file():
        print(f"no tracking store at {args.store}: run make demo first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shadow-bench-") as tmp:
        uri = copy_store(Path(args.store), Path(tmp))
        client = MlflowClient(uri)
        version = client.get_model_version_by_alias(args.model, "production").version
        # A shadow state as rollout writes one: bound to a rollout started in the ledger, valid for an hour.
        rollout = alias_moves.start_rollout(client, args.model, "canary", str(version), "bench: shadow", None)
        expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")
        shadow = Traffic("shadow", str(version), 0, args.share, rollout=rollout, expires=expires)
        alias_moves.set_traffic(client, args.model, shadow, None)
        X, _ = load_test_set(client, client.get_model_version(args.model, version).run_id)
        records = json.loads(X.to_json(orient="records"))
        body = json.dumps({"records": records[:1]})
        batch = json.dumps({"records": (records * (1000 // len(records) + 1))[:1000]})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASE_", "MLFLOW_TRACKING_"))}
        env.update(MLFLOW_TRACKING_URI=uri, MODEL_NAME=args.model, HOST="127.0.0.1", PYTHONPATH=str(ROOT),
                   MODEL_INFO_TOKEN=TOKEN,  # /model shows the canary's traffic only with it
                   # wrk is one client: without a larger budget only its first 20 requests a second would count,
                   # and only counted requests are shadowed (the worst case is every request copied).
                   DECISION_CLIENT_BUDGET=str(10**9))  # fmt: skip
        aliases = {"shadow": "canary", "off": "no-canary-in-this-bench", "shadow + log": "canary"}
        figures: dict[str, list[dict]] = {side: [] for side in ("shadow", "off")}  # the third: everything_on
        logged = {"shadow + log": {"PREDICTION_LOG_URI": str(Path(tmp) / "prediction-log")}}
        with contextlib.ExitStack() as stack:
            urls = {}
            for side, alias in aliases.items():
                port = free_port()
                command = [sys.executable, "-m", "api"]
                side_env = {**env, "PORT": str(port), "CANARY_ALIAS": alias, **logged.get(side, {})}
                urls[side] = stack.enter_context(serving(command, "/ready", port, env=side_env))
            raw_url = stack.enter_context(raw_serve())
            deadline = time.monotonic() + 60
            info = {"Authorization": f"Bearer {TOKEN}"}
            for side in ("shadow", "shadow + log"):
                while (
                    httpx.get(urls[side] + "/model", headers=info, timeout=10).json().get("traffic", {}).get("mode")
                    != "shadow"
                ):
                    if time.monotonic() > deadline:
                        print(f"the {side} side never loaded its canary: nothing to measure", file=sys.stderr)
                        return 3
                    time.sleep(0.5)
            for url in urls.values():  # warm up
                wrk(url + "/predict", body, 2, args.connections)
            for i in range(args.rounds):
                for side in ("shadow", "off") if i % 2 == 0 else ("off", "shadow"):
                    figures[side].append(wrk(urls[side] + "/predict", body, args.duration, args.connections))
                    time.sleep(1)
            counts = {side: shadow_counts(url) for side, url in urls.items()}
            everything = everything_on(urls["shadow + log"], raw_url, {1: body, 1000: batch}, args)
            counts["shadow + log"] = shadow_counts(urls["shadow + log"])
        segments = (Path(tmp) / "prediction-log").rglob("*.parquet")  # each replica flushed as it stopped
        logged_rows = sum(pq.ParquetFile(segment).metadata.num_rows for segment in segments)
    median = {side: {k: statistics.median(f[k] for f in runs) for k in ("rps", "p50_ms", "p99_ms")}
              for side, runs in figures.items()}  # fmt: skip
    rise = median["shadow"]["p99_ms"] / median["off"]["p99_ms"] - 1
    shadowed = counts["shadow"].get("scored", 0.0)
    ok = rise <= SHADOW_MAX_P99_RISE and shadowed > 0 and not any(counts["off"].values())
    print(f"\nshadow, 1 record /predict: the same API shadowing a canary ({args.share:g} of requests copied) and "
          f"not; version {version}, wrk 2 threads, {args.connections} connections, {args.rounds} rounds of "
          f"{args.duration}s per side, alternating; medians")  # fmt: skip
    print(f"{'':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  rounds (p99 ms)")
    for side in ("shadow", "off"):
        m = median[side]
        rounds = ", ".join(f"{f['p99_ms']:.2f}" for f in figures[side])
        print(f"{side:<8} {m['rps']:>9,.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f}  {rounds}")
    print(f"shadow series: {json.dumps(counts['shadow'])}; off: {json.dumps(counts['off'])}")
    print(f"p99 rise with shadow on: {rise:+.1%} ({'met' if ok else 'MISSED'}: <= {SHADOW_MAX_P99_RISE:.0%})")
    print(f"\neverything on: the API shadowing its canary with the prediction log on, against the raw ASGI app; "
          f"{args.rounds} alternating rounds of {args.duration}s; medians; shadow copies scored "
          f"{counts['shadow + log'].get('scored', 0.0):,.0f}, rows logged {logged_rows:,}")  # fmt: skip
    print(f"{'':<12} {'API':>11} {'raw ASGI':>11} {'API/raw':>8} {'API p99 ms':>11}")
    for n, (api, raw) in everything.items():
        unit = "req/s" if n == 1 else "rows/s"
        print(f"{n:>5} {unit:<6} {api['rps'] * n:>11,.0f} {raw['rps'] * n:>11,.0f} {api['rps'] / raw['rps']:>7.0%} "
              f"{api['p99_ms']:>11.2f}")  # fmt: skip
    return 0 if ok else 1


def everything_on(url: str, raw_url: str, bodies: dict[int, str], args: argparse.Namespace) -> dict[int, tuple]:
    """{records: (the API's median figures, the raw app's)} for each body, the two sides alternating."""
    figures: dict[int, tuple[dict, dict]] = {}
    for n, body in bodies.items():
        runs: dict[str, list[dict]] = {"api": [], "raw": []}
        for i in range(args.rounds):
            for side in ("api", "raw") if i % 2 == 0 else ("raw", "api"):
                runs[side].append(wrk((url if side == "api" else raw_url) + "/predict", body, args.duration,
                                      args.connections))  # fmt: skip
        api, raw = ({k: statistics.median(f[k] for f in runs[side]) for k in ("rps", "p99_ms")} for side in runs)
        figures[n] = (api, raw)
    return figures


if __name__ == "__main__":
    sys.exit(main())
