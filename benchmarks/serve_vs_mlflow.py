"""Benchmark: this API against the stack's ceiling and `mlflow models serve`, same version, one run.

Usage (after `make demo`, from the project root):
    .venv/bin/python benchmarks/serve_vs_mlflow.py [--duration 10] [--connections 8]

Three servers, one worker each, on loopback: this API (`python -m api`, the
image's entry point), a no-op FastAPI app on the same uvicorn settings that
parses the body and answers a constant (`benchmarks/noop_app.py`), and
`mlflow models serve`. Load comes from wrk (apt-get install wrk), 2 threads.
Each figure is printed side by side with the others and checked against the
goals below; it also checks that this API and MLflow answer identically on the
version's whole test set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.runtime.api_process import uvicorn_process  # noqa: E402
from pipeline.runtime.processes import free_port, stop, wait_for  # noqa: E402
from pipeline.store.tracking import load_test_set  # noqa: E402

# (case, what is compared, the least ratio): the goals on a 2-core machine, one worker.
GOALS = {
    "1 record /predict": ("no-op", 0.60),
    "1000 records /predict": ("no-op", 0.50),
    "1 record /invocations": ("mlflow", 5.0),
    "1000 records /invocations": ("mlflow", 5.0),
}
P99_GOAL_MS = 5.0  # one-record /predict


def wrk(url: str, body: str, duration: int, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        script.flush()
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


@contextlib.contextmanager
def serving(command: list[str], ready_path: str, port: int, **popen):
    """Run a server command on `port` until the block ends; yields its URL once `ready_path` answers."""
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    try:
        wait_for(url + ready_path, 120, process)
        yield url
    finally:
        stop(process)


def mlflow_serve(model_uri: str):
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-p", str(port), "-h", "127.0.0.1", "-w", "1"]  # fmt: skip
    return serving(command, "/ping", port, env=env)


def noop_serve():
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.noop_app:app", "--host", "127.0.0.1",
               "--port", str(port), "--no-access-log"]  # fmt: skip
    return serving(command, "/docs", port, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="churn-classifier")
    parser.add_argument("--alias", default="production")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias(args.model, args.alias)
    X, _ = load_test_set(client, version.run_id)
    records = json.loads(X.to_json(orient="records"))
    split = json.loads(X.to_json(orient="split", index=False))
    rows = min(1000, len(X))
    batch = {"columns": split["columns"], "data": split["data"][:rows]}
    one = {"columns": split["columns"], "data": split["data"][:1]}
    one_split, batch_split = json.dumps({"dataframe_split": one}), json.dumps({"dataframe_split": batch})
    bodies = {  # case: (body for this API and the no-op, body for MLflow, rows)
        "1 record /predict": (json.dumps({"records": records[:1]}), one_split, 1),
        f"{rows} records /predict": (json.dumps({"records": records[:rows]}), batch_split, rows),
        "1 record /invocations": (one_split, one_split, 1),
        f"{rows} records /invocations": (batch_split, batch_split, rows),
    }

    env = {"MODEL_NAME": args.model, "MODEL_VERSION": str(version.version)}
    results = []
    reference = mlflow_serve(f"models:/{args.model}/{version.version}")
    with reference as ref_url, noop_serve() as noop_url, uvicorn_process(env) as url:
        wait_for(url + "/ready", 120)
        ours_all = httpx.post(url + "/invocations", json={"dataframe_split": split}, timeout=60).json()
        ref_all = httpx.post(ref_url + "/invocations", json={"dataframe_split": split}, timeout=60).json()
        predict_all = httpx.post(url + "/predict", json={"records": records}, timeout=60).json()
        identical = ours_all == ref_all and predict_all["predictions"] == ref_all["predictions"]
        fast_path = httpx.get(url + "/model").json().get("fast_path")
        for case, (body, ref_body, n) in bodies.items():
            path = "/predict" if "/predict" in case else "/invocations"
            figures = {}
            for side, base, payload in (
                ("api", url, body),
                ("no-op", noop_url, body),
                ("mlflow", ref_url, ref_body),
            ):
                figures[side] = wrk(base + ("/invocations" if side == "mlflow" else path), payload,
                                    args.duration, args.connections)  # fmt: skip
                time.sleep(1)
            results.append((case, n, figures))

    print(f"\nmodel {args.model} version {version.version} (fast path: {fast_path}); wrk 2 threads, "
          f"{args.connections} connections, {args.duration}s per side; one worker each. "
          "MLflow is always sent dataframe_split to /invocations.\n")  # fmt: skip
    print(f"{'case':<28} {'':>7} {'this API':>11} {'no-op':>11} {'mlflow':>10} {'API/no-op':>10} "
          f"{'API/mlflow':>11}  goal")  # fmt: skip
    met = True
    for case, n, f in results:
        api, noop, ref = f["api"], f["no-op"], f["mlflow"]
        unit = "req/s" if n == 1 else "rows/s"
        against, least = GOALS[case.replace(str(rows), "1000")]
        ratio = api["rps"] / (noop if against == "no-op" else ref)["rps"]
        ok = ratio >= least
        goal = f"{'met' if ok else 'MISSED'} (>= {least:g}{'x' if against == 'mlflow' else ''} {against})"
        if case == "1 record /predict":
            ok_p99 = api["p99_ms"] <= P99_GOAL_MS
            goal += f"; p99 {'met' if ok_p99 else 'MISSED'} (<= {P99_GOAL_MS:g} ms)"
            ok = ok and ok_p99
        met = met and ok
        print(f"{case:<28} {unit:>7} {api['rps'] * n:>11,.0f} {noop['rps'] * n:>11,.0f} {ref['rps'] * n:>10,.0f} "
              f"{api['rps'] / noop['rps']:>9.0%} {api['rps'] / ref['rps']:>10.1f}x  {goal}")  # fmt: skip
        print(f"{'':<28} {'p50 ms':>7} {api['p50_ms']:>11.2f} {noop['p50_ms']:>11.2f} {ref['p50_ms']:>10.2f}")
        print(f"{'':<28} {'p99 ms':>7} {api['p99_ms']:>11.2f} {noop['p99_ms']:>11.2f} {ref['p99_ms']:>10.2f}")
        if api["errors"] or ref["errors"] or noop["errors"]:
            print(f"{'':<28} non-2xx: API {api['errors']}, no-op {noop['errors']}, mlflow {ref['errors']}")
    print(f"\nidentical predictions on the whole test set ({len(X)} rows): {identical}")
    print(f"goals: {'all met' if met else 'not all met'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
