"""Benchmark: this API against `mlflow models serve`, same registered version, one run.

Usage (after `make demo`, from the project root):
    .venv/bin/python benchmarks/serve_vs_mlflow.py [--duration 10] [--connections 8]

Both servers run one worker on loopback. Load comes from wrk (apt-get install
wrk) with 2 threads; each figure is printed side by side with its ratio. It
also checks that both answer identically on the version's whole test set.
"""

from __future__ import annotations

import argparse
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

from pipeline.serving import free_port, uvicorn_process, wait_for  # noqa: E402
from pipeline.tracking import load_test_set  # noqa: E402


def wrk(url: str, body: str, duration: int, connections: int) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
    script.write(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    script.close()
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(script.name)
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


def mlflow_serve(model_uri: str, port: int):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-p", str(port), "-h", "127.0.0.1", "-w", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


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
    batch = json.loads(X.head(1000).to_json(orient="split", index=False)) if len(X) >= 1000 else split
    rows = len(batch["data"])

    port = free_port()
    reference = mlflow_serve(f"models:/{args.model}/{version.version}", port)
    ref_url = f"http://127.0.0.1:{port}"
    env = {"MODEL_NAME": args.model, "MODEL_VERSION": str(version.version)}
    try:
        wait_for(ref_url + "/ping", 120, reference)
        with uvicorn_process(env) as url:
            wait_for(url + "/ready", 120)
            ours_all = httpx.post(url + "/invocations", json={"dataframe_split": split}, timeout=60).json()
            ref_all = httpx.post(ref_url + "/invocations", json={"dataframe_split": split}, timeout=60).json()
            predict_all = httpx.post(url + "/predict", json={"records": records}, timeout=60).json()
            identical = ours_all == ref_all and predict_all["predictions"] == ref_all["predictions"]
            one = {"dataframe_split": {"columns": split["columns"], "data": split["data"][:1]}}
            cases = [
                ("1 record, /invocations", url + "/invocations", ref_url + "/invocations", json.dumps(one), 1),
                ("1 record, /predict vs mlflow /invocations", url + "/predict", ref_url + "/invocations",
                 json.dumps({"records": records[:1]}), 1),
                (f"{rows} records, /invocations", url + "/invocations", ref_url + "/invocations",
                 json.dumps({"dataframe_split": batch}), rows),
                (f"{rows} records, /predict vs mlflow /invocations", url + "/predict", ref_url + "/invocations",
                 json.dumps({"records": records[:rows]}), rows),
            ]  # fmt: skip
            results = []
            for name, ours_url, ref_case_url, body, n in cases:
                ref_body = (
                    body
                    if "records" not in json.loads(body)
                    else json.dumps({"dataframe_split": batch if n > 1 else one["dataframe_split"]})
                )
                ours = wrk(ours_url, body, args.duration, args.connections)
                time.sleep(1)
                ref = wrk(ref_case_url, ref_body, args.duration, args.connections)
                results.append((name, n, ours, ref))
    finally:
        reference.terminate()
        reference.wait(15)

    print(f"\nmodel {args.model} version {version.version}; wrk 2 threads, {args.connections} connections, "
          f"{args.duration}s per side; one worker each\n")  # fmt: skip
    print(f"{'case':<46} {'':>6} {'this API':>12} {'mlflow serve':>14} {'ratio':>8}")
    for name, n, ours, ref in results:
        unit = "req/s" if n == 1 else "rows/s"
        scale = n
        print(f"{name:<46} {unit:>6} {ours['rps'] * scale:>12,.0f} {ref['rps'] * scale:>14,.0f} "
              f"{ours['rps'] / ref['rps']:>7.1f}x")  # fmt: skip
        print(f"{'':<46} {'p50 ms':>6} {ours['p50_ms']:>12.2f} {ref['p50_ms']:>14.2f}")
        print(f"{'':<46} {'p99 ms':>6} {ours['p99_ms']:>12.2f} {ref['p99_ms']:>14.2f}")
        if ours["errors"] or ref["errors"]:
            print(f"{'':<46} non-2xx: this API {ours['errors']}, mlflow serve {ref['errors']}")
    print(f"\nidentical predictions on the whole test set ({len(X)} rows): {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
