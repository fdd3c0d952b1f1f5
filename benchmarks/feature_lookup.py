"""Benchmark: one-record /predict by customer id (features read from Feast's online store) against the same record
sent in full, side by side, on SQLite and on a real Redis; the store read alone, in a loop; `mlflow models serve`
given the records in full; and `features materialize --full` rows/s on the default data's size.

Usage (from the project root; needs build/feast-venv (make feast), redis-server and wrk):
    .venv/bin/python benchmarks/feature_lookup.py [--duration 5] [--rounds 2] [--customers 800]

A Feast store is built by Feast itself in a temporary folder (the builder of tests/unit/test_online_store.py:
featurestore/repo's views and service over generate_churn's customers), materialized to SQLite and to a
redis-server started here. The API serves the conftest-sized model (generate_churn(800, 3), the default model type)
carrying the service's record, one uvicorn worker with the project's HTTP protocol, on loopback. wrk (2 threads, one
for one connection; pinned to CPU 0 as in benchmarks/serve_vs_mlflow.py) posts one-record bodies rotating over 50
customers: in full, then by id, alternating rounds (full, id, id, full, ...) so a busier moment weighs on both.
Latency with 1 connection, throughput with 8. Before any load the two answers are checked equal for those customers.

Goals (issue 29): the lookup adds at most 2 ms p99 on Redis; by id stays ahead of `mlflow models serve` in full.
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
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the project's packages and the sibling benchmarks

from serve_vs_mlflow import mlflow_serve  # noqa: E402
from serve_vs_mlflow import wrk as wrk_one  # noqa: E402

from pipeline.runtime.processes import free_port, stop, wait_for  # noqa: E402

P99_GOAL_MS = 2.0


def _model(customers: int = 800, seed: int = 3):
    """The conftest's model (tests/api/conftest.py), carrying the test store's service record."""
    from mlflow.models import Model

    from api.model.online_store import METADATA_KEY
    from pipeline.core.churn_data import generate_churn
    from pipeline.core.config import DataParams, ModelParams
    from pipeline.core.data import prepare
    from pipeline.core.train import train
    from tests.api.conftest import make_model
    from tests.unit.test_online_store import service_record

    frame = generate_churn(customers, seed)
    result = train(prepare(frame.astype(str), DataParams()), ModelParams(), test_size=0.25, seed=seed)
    model = make_model(result)
    model.mlflow_model = Model(signature=model.mlflow_model.signature, metadata={METADATA_KEY: service_record()})
    model.__post_init__()
    X = result.split.X_test.head(50)
    ids = frame.customerID.iloc[X.index].tolist()
    return model, ids, json.loads(X.to_json(orient="records"))


def mlflow_model_dir(folder: Path, customers: int = 800, seed: int = 3) -> Path:
    """The same fitted pipeline as `_model`'s (same data and seed), saved as MLflow saves a version (skops)."""
    import mlflow
    import skops.io

    from pipeline.core.churn_data import generate_churn
    from pipeline.core.config import DataParams, ModelParams
    from pipeline.core.data import prepare
    from pipeline.core.train import train

    frame = generate_churn(customers, seed)
    result = train(prepare(frame.astype(str), DataParams()), ModelParams(), test_size=0.25, seed=seed)
    path = folder / "mlflow-model"
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(result.model))
    mlflow.sklearn.save_model(result.model, str(path), serialization_format="skops", skops_trusted_types=untrusted)
    return path


def materialize_rate(folder: Path, rows: int = 7043) -> dict[str, float]:
    """`python -m pipeline features build, apply, materialize --full` on the default data's size, in a project copy.

    The figures are materialize's own JSON answer: rows loaded into the SQLite online store, seconds, rows/s.
    """
    from pipeline.core.churn_data import generate_churn

    project = folder / "materialize"
    (project / "data").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(ROOT / "featurestore" / "repo", project / "featurestore" / "repo")
    generate_churn(rows, 42).to_csv(project / "data" / "churn.csv", index=False)
    answer = ""
    for command in (["build"], ["apply"], ["materialize", "--full"]):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "features", *command, "--set", f"data.rows={rows}"],
            cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        answer = done.stdout.strip().splitlines()[-1]
    figures = json.loads(answer)
    return {"rows": figures["rows"], "seconds": figures["seconds"], "rows_per_s": figures["rows_per_s"]}


def serve(port: int) -> None:
    """The server side (a child process): the model, the app with FEATURE_STORE_URL from the environment."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import uvicorn

    from api.app import create_app
    from api.holder import ModelHolder
    from api.http_protocol import PROTOCOL
    from api.settings import Settings

    model, _, _ = _model()
    app = create_app(ModelHolder(model=model), Settings.from_env())
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, http=PROTOCOL, log_level="warning")


@contextlib.contextmanager
def api(store_url: str):
    port = free_port()
    env = {**os.environ, "FEATURE_STORE_URL": store_url, "PYTHONPATH": str(ROOT), "DECISION_CLIENT_BUDGET": "1000000"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/ready", 180, process)
        yield url
    finally:
        stop(process)


def wrk(url: str, bodies: list[str], duration: int, connections: int) -> dict[str, float]:
    """wrk's figures for POSTing the bodies in turn to /predict; wrk on CPU 0 when there are two or more."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []
    lua = (
        f"local bodies = {{{', '.join(json.dumps(b) for b in bodies)}}}\nlocal i = 0\n"
        'request = function()\n  i = i % #bodies + 1\n  return wrk.format("POST", "/predict", '
        '{["Content-Type"] = "application/json"}, bodies[i])\nend\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua)
        script.flush()
        out = subprocess.run(
            [*pin, "wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency",
             "-s", script.name, url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} non-2xx answers:\n{out}")
    return {
        "rps": float(_find(r"Requests/sec:\s+([\d.]+)", out)),
        "p50": _ms(_find(r"50%\s+([\d.]+\w+)", out)),
        "p99": _ms(_find(r"99%\s+([\d.]+\w+)", out)),
    }


def _find(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise SystemExit(f"wrk's output lacks {pattern!r}:\n{text}")
    return found.group(1)


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(\w+)", text)
    assert found is not None
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def direct(url: str, spec, ids: list[str], n: int = 5000) -> tuple[float, float]:
    """p50 and p99 (ms) of one-record reads of the store, in a loop, this process."""
    from api.model.online_store import open_store

    store = open_store(url, 1.0)
    for entity in ids:
        store.read("churn", "customerID", spec.views, [entity])
    took = []
    for i in range(n):
        started = time.perf_counter()
        store.read("churn", "customerID", spec.views, [ids[i % len(ids)]])
        took.append(time.perf_counter() - started)
    store.close()
    p50, p99 = np.percentile(took, [50, 99]) * 1000
    return float(p50), float(p99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side (alternating)")
    parser.add_argument("--customers", type=int, default=800)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    from tests.unit.test_online_store import build_feast_store

    folder = Path(tempfile.mkdtemp(prefix="feature-lookup-"))
    print("materializing the default data's 7,043 customers (features build, apply, materialize --full) ...")
    loaded = materialize_rate(folder)
    print(f"building a Feast store ({args.customers} customers) with Feast, SQLite and Redis ...", flush=True)
    store = build_feast_store(folder, customers=args.customers, seed=3)
    _, ids, records = _model()
    full = [json.dumps({"records": [r]}) for r in records]
    by_id = [json.dumps({"records": [{"customerID": i}]}) for i in ids]
    failed = False
    rows = []
    try:
        for name, url in (("sqlite", f"sqlite://{store.sqlite_path}"), ("redis", store.redis.url)):
            p50, p99 = direct(url, store.spec, ids)
            print(f"{name}: direct one-record read p50 {p50:.3f} ms, p99 {p99:.3f} ms (5000 reads)", flush=True)
            with api(url) as served:
                for a, b in zip(full, by_id, strict=True):  # the same answer either way, before any load
                    one, two = httpx.post(served + "/predict", content=a), httpx.post(served + "/predict", content=b)
                    if one.json()["probabilities"] != two.json()["probabilities"]:
                        raise SystemExit(f"{name}: by id and in full differ: {one.text} / {two.text}")
                figures: dict[tuple[str, int], list[dict[str, float]]] = {}
                for round_ in range(args.rounds):
                    order = [("full", full), ("by id", by_id)]
                    for case, bodies in order if round_ % 2 == 0 else order[::-1]:
                        for connections in (1, 8):
                            figures.setdefault((case, connections), []).append(
                                wrk(served + "/predict", bodies, args.duration, connections)
                            )
            med = {
                k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50", "p99")} for k, v in figures.items()
            }
            added50 = med[("by id", 1)]["p50"] - med[("full", 1)]["p50"]
            added99 = med[("by id", 1)]["p99"] - med[("full", 1)]["p99"]
            rows.append((name, med, added50, added99, p50, p99))
            if name == "redis" and added99 > P99_GOAL_MS:
                failed = True
        # The bar of issue 29: throughput by id against `mlflow models serve` given the same records in full.
        with mlflow_serve(str(mlflow_model_dir(folder))) as served:
            body = json.dumps({"dataframe_records": records[:1]})
            mlflow_rps = statistics.median(
                wrk_one(served + "/invocations", body, args.duration, 8)["rps"] for _ in range(args.rounds)
            )
    finally:
        store.redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\none-record /predict, medians of {args.rounds} rounds of {args.duration} s (1 connection: latency; 8: req/s)"
    )
    print(f"{'store':8}{'case':8}{'p50 ms':>9}{'p99 ms':>9}{'req/s c=1':>11}{'req/s c=8':>11}")
    for name, med, added50, added99, _, _ in rows:
        for case in ("full", "by id"):
            one, eight = med[(case, 1)], med[(case, 8)]
            print(f"{name:8}{case:8}{one['p50']:9.3f}{one['p99']:9.3f}{one['rps']:11.0f}{eight['rps']:11.0f}")
        verdict = "ok" if name != "redis" or added99 <= P99_GOAL_MS else f"over the {P99_GOAL_MS} ms goal"
        print(f"{name:8}{'added':8}{added50:9.3f}{added99:9.3f}   (by id minus in full) {verdict}")
    print(
        f"\nmaterialize --full (SQLite online store): {loaded['rows']:,.0f} rows in {loaded['seconds']:.1f} s, "
        f"{loaded['rows_per_s']:,.0f} rows/s"
    )
    print(f"{'mlflow':8}{'full':8}{'':9}{'':9}{'':11}{mlflow_rps:11.0f}   (`mlflow models serve`, /invocations)")
    for name, med, *_ in rows:
        ahead = med[("by id", 8)]["rps"] / mlflow_rps
        print(f"{name}: by id at {ahead:.1f}x `mlflow models serve` given full records")
        failed = failed or ahead < 1.0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
