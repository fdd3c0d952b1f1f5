"""Benchmark: `python -m pipeline score` against `mlflow models predict` on the same CSV and version.

Usage (after `make demo`, from the project root):
    .venv/bin/python benchmarks/score_vs_mlflow_predict.py [--rows 100000]

Builds a CSV of ROWS rows drawn from the production version's test set, scores
it with both commands (each a fresh process, wall time from start to exit, as a
workflow step pays it), prints rows/s side by side with the ratio, and checks
that both give the same label for every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.store.tracking import load_raw_test_set  # noqa: E402

GOAL = 5.0  # the least ratio


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def in_process(model: str, version: str, csv: Path, tmp: Path) -> tuple[float, float]:
    """Seconds each side takes to read, score and write the CSV once its model is loaded."""
    import mlflow.pyfunc
    from mlflow.pyfunc.scoring_server import parse_csv_input, predictions_to_json

    from api.settings import Settings
    from api.source import RegistrySource
    from pipeline.runtime.batch_scoring import score_csv

    loaded = RegistrySource(Settings(model_name=model, model_version=version)).load(version)
    started = time.perf_counter()
    score_csv(loaded, csv, tmp / "ours-in.csv")
    ours = time.perf_counter() - started
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model}/{version}")
    started = time.perf_counter()
    with open(tmp / "theirs-in.json", "w") as out:
        predictions_to_json(pyfunc.predict(parse_csv_input(str(csv))), out)
    return ours, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="churn-classifier")
    parser.add_argument("--alias", default="production")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias(args.model, args.alias).version
    test = load_raw_test_set(client, client.get_model_version(args.model, version).run_id)
    features = [c for c in test.columns if not c.startswith("__")]
    frame = test[features].sample(args.rows, replace=True, random_state=0).reset_index(drop=True)
    python = str(Path(sys.executable))
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        csv, ours_out, theirs_out = Path(tmp, "in.csv"), Path(tmp, "ours.csv"), Path(tmp, "theirs.json")
        frame.to_csv(csv, index=False)
        ours = timed([python, "-m", "pipeline", "score", "--input", str(csv), "--output", str(ours_out),
                      "--version", str(version)])  # fmt: skip
        theirs = timed([python, "-m", "mlflow", "models", "predict", "-m", f"models:/{args.model}/{version}",
                        "-i", str(csv), "-t", "csv", "-o", str(theirs_out), "--env-manager", "local"])  # fmt: skip
        ours_labels = pd.read_csv(ours_out, dtype=str)["prediction"].tolist()
        theirs_labels = [str(v) for v in json.loads(theirs_out.read_text())["predictions"]]
        ours_in, theirs_in = in_process(args.model, str(version), csv, Path(tmp))
    print(f"\nmodel {args.model} version {version}; {args.rows:,} rows\n")
    print(f"{'':<44} {'pipeline score':>15} {'mlflow predict':>15} {'ratio':>7}")
    for what, a, b in (("wall time of the command (s)", ours, theirs),
                       ("after the model is loaded, in process (s)", ours_in, theirs_in)):  # fmt: skip
        print(f"{what:<44} {a:>15.2f} {b:>15.2f} {b / a:>6.1f}x")
        print(f"{'  rows/s':<44} {args.rows / a:>15,.0f} {args.rows / b:>15,.0f}")
    ratio = theirs / ours
    print(f"\nwall-time ratio {ratio:.1f}x: goal (>= {GOAL:g}x) {'met' if ratio >= GOAL else 'MISSED'}")
    identical = ours_labels == theirs_labels
    print(f"identical labels on all {args.rows:,} rows: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
