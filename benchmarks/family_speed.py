"""Benchmark: every model family, this API and `score` against MLflow's own server and `mlflow models predict`.

Usage (from the project root; needs wrk: apt-get install -y wrk, or make system-deps):
    .venv/bin/python benchmarks/family_speed.py                  # the full run (make bench)
    .venv/bin/python benchmarks/family_speed.py --quick          # fewer seconds, fewer rows: while developing
    .venv/bin/python benchmarks/family_speed.py --family xgboost --family lightgbm   # some families only

For each family in families.FAMILIES (discovered, never listed here), in one
run: a temporary project (params.yaml copied, a throwaway sqlite tracking
store, the default generated data) trains it with `python -m pipeline train
--set model.type=FAMILY`, then gates, registers and smoke-tests the version as
the flow does (`score` and the API serve only a version that passed both).
The project's own store is never touched.

Then, per family, the same version served two ways, one uvicorn worker each, on
loopback, measured one at a time with wrk (2 threads, pinned to CPU 0; see
benchmarks/serve_vs_mlflow.py): this API (`python -m api`, MODEL_VERSION pinned)
and `mlflow models serve` of the same artifact. One-record /predict (req/s and
p99) and 1,000-record /predict (rows/s) against MLflow's /invocations with the
same rows as dataframe_split; before any load, both answer the version's whole
test set and must agree label for label.

And batch scoring on one generated CSV (2M rows by default, made once for all
families; see benchmarks/score_vs_mlflow_predict.py): `python -m pipeline score
--version V` against `mlflow models predict` (--env-manager local), each a
fresh process, wall time from start to exit, the labels compared row for row.

The served artifact is an MLflow sklearn-flavor model whose skops file names
classes of the project's `families` and `features` packages: every process here
runs with the project root on PYTHONPATH, MLflow's included.

Every process inherits this one's environment: OMP_NUM_THREADS=1 (say) applies
to both sides alike. scikit-learn's histogram gradient boosting predicts with
OpenMP threads; on a busy 2-core machine they make it many times slower, so
compare its line with and without that setting. `python -m api` sets it to 1 unless
it is set (api/__main__.py); `mlflow models serve` does not.

Goal (issue 28): every family ahead of MLflow's own tools for that family on
every figure (ratio > 1); a family without a compiled path may be slower than
logistic regression. Exit 1 when a family misses it, fails to train, or
answers differently from MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # the project's packages and the sibling benchmarks

import httpx  # noqa: E402
from score_vs_mlflow_predict import SEED, compare, generate, in_process_rate, run  # noqa: E402
from serve_vs_mlflow import mlflow_serve, wrk  # noqa: E402
from walks import CLEARED  # noqa: E402

from families import FAMILIES  # noqa: E402
from pipeline.runtime.api_process import uvicorn_process  # noqa: E402
from pipeline.runtime.processes import wait_for  # noqa: E402

MODEL = "churn-classifier"  # registry.model_name in params.yaml
BATCH = 1000  # rows of the batch /predict case
MB = 1_000_000


@dataclass
class Result:
    """One family's figures (None: not measured); `problems` says what went wrong."""

    family: str
    version: str = ""
    fast_path: object = None
    one: dict[str, dict] = field(default_factory=dict)  # side: wrk figures, one record
    batch: dict[str, dict] = field(default_factory=dict)  # side: wrk figures, BATCH records
    score: dict[str, float] = field(default_factory=dict)  # side: rows/s
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def pipeline_cli(project: Path, *args: str) -> str:
    """`python -m pipeline ARGS` in the temporary project; its stdout (SystemExit with its stderr if it fails)."""
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise SystemExit(f"pipeline {args[0]} exited {done.returncode}:\n{tail}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def release(project: Path, family: str) -> tuple[str, str]:
    """Train `family` on the default data, gate, register and smoke-test it; (version, run id)."""
    run_id = pipeline_cli(project, "train", "--set", f"model.type={family}")
    pipeline_cli(project, "gate", "--run-id", run_id)
    version = pipeline_cli(project, "register", "--run-id", run_id)
    pipeline_cli(project, "smoke", "--version", version)
    return version, run_id


def serve_side_by_side(result: Result, run_id: str, duration: int, connections: int) -> None:
    """This API against `mlflow models serve` for one version: agreement first, then wrk, one side at a time."""
    from mlflow.tracking import MlflowClient

    from pipeline.store.training_runs import load_test_set

    X, _ = load_test_set(MlflowClient(), run_id)
    records = json.loads(X.to_json(orient="records"))
    split = json.loads(X.to_json(orient="split", index=False))
    rows = min(BATCH, len(X))

    def dataframe_split(n: int) -> str:
        return json.dumps({"dataframe_split": {"columns": split["columns"], "data": split["data"][:n]}})

    cases = {  # case: (body for /predict, body for MLflow's /invocations)
        "one": (json.dumps({"records": records[:1]}), dataframe_split(1)),
        "batch": (json.dumps({"records": records[:rows]}), dataframe_split(rows)),
    }
    env = {"MODEL_NAME": MODEL, "MODEL_VERSION": result.version}
    with mlflow_serve(f"models:/{MODEL}/{result.version}") as ref_url, uvicorn_process(env) as url:
        wait_for(url + "/ready", 120)
        ours = httpx.post(url + "/invocations", json={"dataframe_split": split}, timeout=120).json()
        theirs = httpx.post(ref_url + "/invocations", json={"dataframe_split": split}, timeout=120).json()
        predicted = httpx.post(url + "/predict", json={"records": records}, timeout=120).json()
        if not (ours == theirs and predicted.get("predictions") == theirs.get("predictions")):
            result.problems.append(f"API and mlflow serve answer the {len(X)} test rows differently")
        result.fast_path = httpx.get(url + "/model", timeout=10).json().get("fast_path")
        for case, (body, ref_body) in cases.items():
            figures = getattr(result, case)
            for side, target, payload in (("api", url + "/predict", body), ("mlflow", ref_url + "/invocations",
                                                                            ref_body)):  # fmt: skip
                wrk(target, payload, max(1, duration // 5), connections)  # warm-up, not counted
                figures[side] = wrk(target, payload, duration, connections)
                figures[side]["rows"] = 1 if case == "one" else rows
                if figures[side]["errors"]:
                    result.problems.append(f"{side} answered {figures[side]['errors']} non-2xx ({case})")
                time.sleep(1)


def score_side_by_side(result: Result, csv: Path, rows: int, work: Path) -> None:
    """`python -m pipeline score` against `mlflow models predict` on the same CSV, one fresh process each."""
    python, tag = sys.executable, result.family
    ours_out, theirs_out = work / f"score-{tag}.csv", work / f"mlflow-{tag}.json"
    try:
        score = run(
            [python, "-m", "pipeline", "score", "--input", str(csv), "--output", str(ours_out),
             "--version", result.version],
            work / f"score-{tag}",
        ).check(f"pipeline score ({tag})")  # fmt: skip
        result.score["api"] = rows / score.seconds
        result.notes.append(f"score {score.seconds:.1f} s, peak RSS {score.maxrss / MB:,.0f} MB; "
                            f"{in_process_rate(score.stderr)}")  # fmt: skip
        mlflow = run(
            [python, "-m", "mlflow", "models", "predict", "-m", f"models:/{MODEL}/{result.version}", "-i", str(csv),
             "-t", "csv", "-o", str(theirs_out), "--env-manager", "local"],
            work / f"mlflow-{tag}",
        ).check(f"mlflow models predict ({tag})")  # fmt: skip
        result.score["mlflow"] = rows / mlflow.seconds
        result.notes.append(f"mlflow models predict {mlflow.seconds:.1f} s, peak RSS {mlflow.maxrss / MB:,.0f} MB")
        same, how = compare(ours_out, theirs_out)
        if not same:
            result.problems.append(f"score and mlflow models predict differ: {how}")
    finally:
        ours_out.unlink(missing_ok=True)
        theirs_out.unlink(missing_ok=True)


# --- report --------------------------------------------------------------------------------------


def ratio(figures: dict, key: str = "rps") -> float | None:
    if "api" not in figures or "mlflow" not in figures or not figures["mlflow"][key]:
        return None
    return figures["api"][key] / figures["mlflow"][key]


def cell(value: float | None, width: int, fmt: str = ",.0f") -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def rate(figures: dict, side: str) -> float | None:
    """Requests/s for one record, rows/s for a batch (None: not measured)."""
    f = figures.get(side)
    return None if f is None else f["rps"] * f["rows"]


def p99(figures: dict, side: str) -> float | None:
    f = figures.get(side)
    return None if f is None else f["p99_ms"]


def report(results: list[Result], args: argparse.Namespace) -> bool:
    """Print the table; True when every family is ahead of MLflow on every figure and agrees with it."""
    print(f"\nwrk 2 threads, {args.connections} connections, {args.duration}s per side (after a warm-up); one worker "
          f"each; batch scoring on {args.rows:,} rows, wall time of a fresh process (start-up and load included). "
          "API: /predict; MLflow: /invocations, same rows as dataframe_split.\n")  # fmt: skip
    head = (f"{'family':<24} {'fast path':>9} | {'1 record req/s':^26} | {'p99 ms':^13} | "
            f"{f'{BATCH:,} records rows/s':^30} | {'batch scoring rows/s':^30}")  # fmt: skip
    sub = (f"{'':<24} {'':>9} | {'API':>8} {'mlflow':>8} {'ratio':>7} | {'API':>6} {'mlflow':>6} | "
           f"{'API':>10} {'mlflow':>10} {'ratio':>7} | {'score':>10} {'mlflow':>10} {'ratio':>7}")  # fmt: skip
    print(head)
    print(sub)
    print("-" * len(sub))
    ok = True
    for r in results:
        ratios = [ratio(r.one), ratio(r.batch), ratio({k: {"rps": v} for k, v in r.score.items()})]
        behind = [x for x in ratios if x is not None and x <= 1.0]
        ok = ok and not r.problems and not behind and None not in ratios

        fast = "-" if r.fast_path is None else ("yes" if r.fast_path else "no")
        print(
            f"{r.family + (' v' + r.version if r.version else ''):<24} {fast:>9} | "
            f"{cell(rate(r.one, 'api'), 8)} {cell(rate(r.one, 'mlflow'), 8)} {cell(ratios[0], 6, '.1f')}x | "
            f"{cell(p99(r.one, 'api'), 6, '.1f')} {cell(p99(r.one, 'mlflow'), 6, '.0f')} | "
            f"{cell(rate(r.batch, 'api'), 10)} {cell(rate(r.batch, 'mlflow'), 10)} {cell(ratios[1], 6, '.1f')}x | "
            f"{cell(r.score.get('api'), 10)} {cell(r.score.get('mlflow'), 10)} {cell(ratios[2], 6, '.1f')}x"
        )
    print()
    for r in results:
        for note in r.notes:
            print(f"  {r.family}: {note}")
        for problem in r.problems:
            print(f"  {r.family}: PROBLEM: {problem}")
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"goal (every family ahead of MLflow's own server and predict, same answers): {'met' if ok else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per side and 50,000 rows (unless given)")
    parser.add_argument("--duration", type=int, default=None, help="wrk seconds per side (default 10; quick 3)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rows", type=int, default=None, help="rows of the batch CSV (default 2,000,000; quick 50k)")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only these (repeatable)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temporary project and files")
    parser.add_argument("--data", type=Path, default=None, help="keep the batch CSV here and reuse it next time")
    args = parser.parse_args()
    args.duration = args.duration or (3 if args.quick else 10)
    args.rows = args.rows or (50_000 if args.quick else 2_000_000)
    if not shutil.which("wrk"):
        print("needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    names = args.family or list(FAMILIES)
    print(f"families: {', '.join(names)}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
          f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip

    for name in CLEARED:  # the default, local flow whatever the caller's shell has: unsigned, no CI, no cluster
        os.environ.pop(name, None)
    results = [Result(name) for name in names]
    with tempfile.TemporaryDirectory(prefix="families-bench-", dir=args.tmp) as tmp:
        project = Path(tmp)
        shutil.copy(ROOT / "params.yaml", project / "params.yaml")
        # Every process from here on, MLflow's included, uses the throwaway store and finds families/ and features/.
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        pipeline_cli(project, "make-data")
        run_ids: dict[str, str] = {}
        for r in results:
            started = time.perf_counter()
            try:
                r.version, run_ids[r.family] = release(project, r.family)
            except SystemExit as exc:
                r.problems.append(f"not released: {exc}")
            print(f"  {r.family}: trained, gated, registered, smoke-tested as version {r.version or '-'} in "
                  f"{time.perf_counter() - started:.0f}s", file=sys.stderr)  # fmt: skip

        data = args.data or project
        data.mkdir(parents=True, exist_ok=True)
        csv = data / f"customers-{args.rows}-seed{SEED}.csv"
        if not csv.exists():
            generate({csv.with_suffix(".partial"): args.rows})
            csv.with_suffix(".partial").replace(csv)
        warm = project / "warm-up.csv"  # one untimed run: a cold page cache or first import is no one's figure
        with csv.open() as src, warm.open("w") as dst:
            dst.writelines(line for _, line in zip(range(1001), src, strict=False))

        for r in results:
            if not r.version:
                continue
            print(f"  {r.family}: serving side by side", file=sys.stderr)
            try:
                serve_side_by_side(r, run_ids[r.family], args.duration, args.connections)
            except (Exception, SystemExit) as exc:  # one family's failure is reported, the others still measured
                r.problems.append(f"serving: {type(exc).__name__}: {exc}")
            print(f"  {r.family}: batch scoring side by side", file=sys.stderr)
            try:
                warm_up = [sys.executable, "-m", "pipeline", "score", "--input", str(warm), "--output",
                           str(project / "warm-out.csv"), "--version", r.version]  # fmt: skip
                run(warm_up, project / "warm-up").check("warm-up")
                score_side_by_side(r, csv, args.rows, project)
            except SystemExit as exc:
                r.problems.append(f"batch scoring: {exc}")
    return 0 if report(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
