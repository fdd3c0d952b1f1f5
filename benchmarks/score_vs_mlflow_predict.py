"""Benchmark: `python -m pipeline score` against the I/O floor and `mlflow models predict`, measured in one run.

Usage (after `make demo`, from the project root):
    .venv/bin/python benchmarks/score_vs_mlflow_predict.py [--rows 2000000] [--big-rows 10000000]
    .venv/bin/python benchmarks/score_vs_mlflow_predict.py --rows 50000 --big-rows 200000   # a quick run
    .venv/bin/python benchmarks/score_vs_mlflow_predict.py --no-spark                       # without the Spark line
    .venv/bin/python benchmarks/score_vs_mlflow_predict.py --repeat 3                       # a busy machine

Input: churn-shaped customers from pipeline/core/churn_data.py::generate_churn (an id
column and the features, typed as training types them: numbers as decimals,
blank TotalCharges empty; no target), generated a chunk at a time and appended
to the CSVs in this process before anything is timed, so no process needs the
whole file in memory to make it. The --rows file is the first ROWS rows of the
--big-rows file. Files go to a temp folder (--tmp, default the system's) that is
deleted at the end; with --data DIR the CSVs are kept in DIR and reused by the
next run with the same row counts (generating 10M rows takes minutes).

On each file, one fresh process each, wall time from start to exit (start-up,
imports and loading the version included, as a workflow step pays it); with
--repeat N the floor and score run N times each, alternating, and the fastest
of each is kept (on a shared machine, others' work only ever slows a run down):

- the I/O floor: pyarrow reads the CSV as `score` reads it (streaming, same
  block size and parse options, every column as text) and writes it back as
  CSV with the three columns `score` adds (prediction, probability,
  model_version), with no model and no validation: the most any CSV scorer
  built on pyarrow could do here;
- `python -m pipeline score --input IN --output OUT --version V`;
- `mlflow models predict` (--env-manager local), only on the --rows file: it
  reads the whole file into pandas (on 10M rows the issue saw it OOM-killed
  after 24 GB); its predictions are compared with score's, row for row;
- `python -m pipeline score --engine spark --master local[2]` on the --rows file
  (Parquet dataset out), when pyspark and java are there and --no-spark is not given.

Peak RSS ("peak RSS") is the kernel's ru_maxrss of the command (os.wait4: the
largest of the process and the children it waited for, like /usr/bin/time's
"Maximum resident set size"); "tree RSS" is the peak of the RSS summed over the
command's process tree (e.g. `score` and its load-probe child, or Spark's JVM
and Python workers), polled from /proc every 50 ms. The machine's load average
is printed: figures from a busy machine are low for every line alike.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOOR_SHARE_GOAL = 0.80  # score's rows/s, at least this share of the I/O floor's, on a file this large:
FLOOR_GOAL_ROWS = 10_000_000  # smaller files are dominated by start-up (imports, loading the version)
MLFLOW_RATIO_GOAL = 5.0  # score at least this many times as fast as mlflow models predict
RSS_GOAL = 1_000_000_000  # bytes: score's peak RSS under 1 GB
CHUNK_ROWS = 250_000  # rows generated at a time
SEED = 7  # of the first chunk (each chunk: SEED + its index)
MB = 1_000_000

# The floor, run as `python -c FLOOR IN OUT BLOCK_BYTES`: pyarrow only, read and written as `score` does
# (pipeline/scoring/csv_reader.py: streaming reader, every column text, a quoted line break allowed; CSVWriter).
FLOOR = """
import csv, sys
import numpy as np, pyarrow as pa, pyarrow.csv as pcsv
source, target, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(source, newline="", encoding="utf-8-sig") as f:
    names = next(csv.reader(f))
reader = pcsv.open_csv(
    source,
    read_options=pcsv.ReadOptions(block_size=block, column_names=names, skip_rows=1),
    parse_options=pcsv.ParseOptions(newlines_in_values=True),
    convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
)
probabilities = np.random.default_rng(0).random(1 << 20)
schema = pa.schema([*reader.schema, ("prediction", pa.string()), ("probability", pa.float64()),
                    ("model_version", pa.string())])
rows = 0
with pcsv.CSVWriter(target, schema) as writer:
    for batch in reader:
        n = batch.num_rows
        added = [pa.repeat(pa.scalar("No"), n), pa.array(np.resize(probabilities, n)), pa.repeat(pa.scalar("1"), n)]
        writer.write_batch(pa.RecordBatch.from_arrays([*batch.columns, *added], schema=schema))
        rows += n
print(rows)
"""

# Each measured command runs as `python -c LAUNCH FACTS COMMAND...`: a small process that forks and execs it and
# writes its wall time (fork to exit) and ru_maxrss (os.wait4) to FACTS. Forked from this process, whose generated
# data and imports take hundreds of MB, the command's ru_maxrss would start at this process's RSS (Linux counts the
# memory map an exec replaces); forked from the launcher, it starts at a few MB.
LAUNCH = """
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as f:
    code = os.waitstatus_to_exitcode(status)
    json.dump({"seconds": seconds, "maxrss": usage.ru_maxrss * 1024, "returncode": code}, f)
"""


@dataclass
class Run:
    """One process: wall time, exit status, peak RSS (largest process; summed over its tree), its stderr."""

    seconds: float
    returncode: int
    maxrss: int  # bytes
    tree_peak: int  # bytes
    stdout: str
    stderr: str

    def check(self, what: str) -> Run:
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-15:])
            raise SystemExit(f"{what} failed (exit {self.returncode}):\n{tail}")
        return self


class TreePeak(threading.Thread):
    """The peak summed RSS of a process's descendants, polled from /proc (0 where there is no /proc)."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid, itself=False))
            self._done.wait(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _tree_rss(pid: int, itself: bool = True) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            if itself or p != pid:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return total


def run(command: list[str], logs: Path) -> Run:
    """Run `command` from the project root through LAUNCH; wall time from fork to exit, peak RSS, its output."""
    out, err, facts = (logs.with_name(f"{logs.name}.{s}") for s in ("stdout", "stderr", "launch.json"))
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-c", LAUNCH, str(facts), *command], cwd=ROOT, stdout=stdout,
                                   stderr=stderr)  # fmt: skip
        poller = TreePeak(process.pid)
        poller.start()
        process.wait()
        peak = poller.stop()
    if not facts.exists():
        raise SystemExit(f"could not run {command[:4]}: {err.read_text()[-2000:]}")
    got = json.loads(facts.read_text())
    return Run(got["seconds"], got["returncode"], got["maxrss"], peak, out.read_text(), err.read_text())


# --- input ---------------------------------------------------------------------------------------


def generate(targets: dict[Path, int], seed: int = SEED) -> None:
    """Write each CSV with its number of rows; all share the same rows from the start (chunks of CHUNK_ROWS)."""
    import pandas as pd

    from pipeline.core.churn_data import generate_churn
    from pipeline.core.data import infer_types

    total = max(targets.values())
    started, written = time.perf_counter(), 0
    numeric: list[str] = []
    for chunk, start in enumerate(range(0, total, CHUNK_ROWS)):
        rows = min(CHUNK_ROWS, total - start)
        frame = generate_churn(rows, seed=seed + chunk).drop(columns=["Churn"])
        if not numeric:  # the columns training reads as numbers (the model's signature holds them as doubles)
            _, schema = infer_types(frame.drop(columns=["customerID"]))
            numeric = [f.name for f in schema if f.kind == "numeric"]
        for name in numeric:  # as infer_types casts them (blank TotalCharges: empty), a lot faster
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        for path, wanted in targets.items():
            if start < wanted:
                part = frame.iloc[: wanted - start]
                part.to_csv(path, mode="w" if start == 0 else "a", header=start == 0, index=False)
        written += rows
        print(f"\r  generating: {written:,}/{total:,} rows", end="", file=sys.stderr, flush=True)
    print(f" in {time.perf_counter() - started:.0f}s", file=sys.stderr)


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Line:
    """One row of the table."""

    name: str
    rows: int
    run: Run | None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.run.seconds if self.run else 0.0


def in_process_rate(stderr: str) -> str:
    """The rate `score` reports for its scoring loop (the version's load and start-up not counted)."""
    found = re.search(r"in ([\d.]+)s \(([\d,]+) rows/s", stderr)
    return f"scoring loop {found.group(2)} rows/s in {found.group(1)} s" if found else ""


def predictions(path: Path) -> list[str]:
    """The prediction column of a CSV written by `score`."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(
        path,
        convert_options=pcsv.ConvertOptions(include_columns=["prediction"], column_types={"prediction": pa.string()}),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
    )
    return table.column("prediction").to_pylist()


def rejected_rows(output: Path) -> list[int]:
    """Row numbers (1 = the first data row) `score` put in the rejects file, if it wrote one."""
    import pyarrow.csv as pcsv

    from pipeline.scoring.batch_scorer import rejects_path_for

    rejects = rejects_path_for(output)
    if not rejects.exists():
        return []
    table = pcsv.read_csv(rejects, convert_options=pcsv.ConvertOptions(include_columns=["row"]))
    return [int(v) for v in table.column("row").to_pylist()]


def compare(ours_csv: Path, theirs_json: Path) -> tuple[bool, str]:
    """Whether `score` and mlflow give the same label to every row (rows score rejected left out)."""
    ours = predictions(ours_csv)
    theirs = [str(v) for v in json.loads(theirs_json.read_text())["predictions"]]
    skipped = set(rejected_rows(ours_csv))
    if skipped:
        theirs = [v for i, v in enumerate(theirs, start=1) if i not in skipped]
    if len(ours) != len(theirs):
        return False, f"no: {len(ours):,} rows from score, {len(theirs):,} from mlflow"
    differ = sum(a != b for a, b in zip(ours, theirs, strict=True))
    if differ:
        return False, f"no: {differ:,} of {len(ours):,} rows differ"
    return True, f"yes, all {len(ours):,} rows" + (f" ({len(skipped):,} rejected by score left out)" if skipped else "")


def spark_available() -> str:
    """Why the Spark line cannot run ('' when it can)."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install -e '.[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no java (Spark's local mode needs Java 17)"
    return ""


def measure(
    csv: Path,
    rows: int,
    work: Path,
    version: str,
    model: str,
    with_mlflow: bool,
    spark_master: str | None,
    repeat: int = 1,
) -> tuple[list[Line], dict[str, object]]:
    from pipeline.scoring.csv_reader import BLOCK_BYTES

    python = sys.executable
    tag = f"{rows}"
    lines: list[Line] = []
    facts: dict[str, object] = {}

    floor_out, ours_out = work / f"floor-{tag}.csv", work / f"score-{tag}.csv"
    floors: list[Run] = []
    scores: list[Run] = []
    for _ in range(repeat):  # alternating, so a burst of someone else's work slows one of each, not all of one
        floor = run([python, "-c", FLOOR, str(csv), str(floor_out), str(BLOCK_BYTES)], work / f"floor-{tag}")
        floor_rows = int(floor.check("floor").stdout.strip() or 0)
        if floor_rows != rows:
            raise SystemExit(f"the floor read {floor_rows:,} rows of {rows:,}")
        floor_out.unlink()
        floors.append(floor)
        score = run(
            [python, "-m", "pipeline", "score", "--input", str(csv), "--output", str(ours_out), "--version", version],
            work / f"score-{tag}",
        )
        scores.append(score.check("pipeline score"))
    floor, score = fastest(floors), fastest(scores)
    lines.append(Line("I/O floor (pyarrow read + write)", rows, floor, of_runs(floors)))
    lines.append(
        Line(
            "python -m pipeline score",
            rows,
            score,
            "; ".join(filter(None, [in_process_rate(score.stderr), of_runs(scores)])),
        )
    )
    facts["score"], facts["floor"] = lines[-1], lines[0]

    if with_mlflow:
        theirs_out = work / f"mlflow-{tag}.json"
        mlflow = run(
            [python, "-m", "mlflow", "models", "predict", "-m", f"models:/{model}/{version}", "-i", str(csv),
             "-t", "csv", "-o", str(theirs_out), "--env-manager", "local"],
            work / f"mlflow-{tag}",
        ).check("mlflow models predict")  # fmt: skip
        lines.append(Line("mlflow models predict", rows, mlflow))
        facts["mlflow"] = lines[-1]
        facts["identical"] = compare(ours_out, theirs_out)
        theirs_out.unlink()

    if spark_master:
        spark_out = work / f"spark-{tag}.parquet"
        spark = run(
            [python, "-m", "pipeline", "score", "--engine", "spark", "--master", spark_master, "--input", str(csv),
             "--output", str(spark_out), "--version", version],
            work / f"spark-{tag}",
        ).check("pipeline score --engine spark")  # fmt: skip
        lines.append(Line(f"score --engine spark ({spark_master})", rows, spark, spark_check(ours_out, spark_out)))
        shutil.rmtree(spark_out, ignore_errors=True)

    ours_out.unlink()
    return lines, facts


def fastest(runs: list[Run]) -> Run:
    """The run a shared machine disturbed least: the shortest (others' work only ever slows a run down)."""
    return min(runs, key=lambda r: r.seconds)


def of_runs(runs: list[Run]) -> str:
    """Every run's wall time, when there was more than one (--repeat)."""
    return "" if len(runs) < 2 else "fastest of " + ", ".join(f"{r.seconds:.1f}" for r in runs) + " s"


def spark_check(local_csv: Path, dataset: Path) -> str:
    """Whether Spark's labels, counted, are the local engine's (its row order is not the file's)."""
    import collections

    import pyarrow.parquet as pq

    spark = collections.Counter(pq.read_table(dataset, columns=["prediction"]).column(0).to_pylist())
    local = collections.Counter(predictions(local_csv))
    return "same label counts as the local engine" if spark == local else f"label counts differ: {spark} vs {local}"


# --- report --------------------------------------------------------------------------------------


def table(rows: int, size: int, lines: list[Line]) -> None:
    floor = lines[0].rate
    print(f"\n{rows:,} rows ({size / MB:,.0f} MB of CSV)")
    print(f"  {'':<38} {'wall s':>8} {'rows/s':>11} {'of floor':>9} {'peak RSS':>9} {'tree RSS':>9}")
    for line in lines:
        r = line.run
        assert r is not None
        share = f"{line.rate / floor:.0%}" if floor else ""
        print(
            f"  {line.name:<38} {r.seconds:>8.1f} {line.rate:>11,.0f} {share:>9} {r.maxrss / MB:>6,.0f} MB"
            f" {r.tree_peak / MB:>6,.0f} MB" + (f"  {line.note}" if line.note else "")
        )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="churn-classifier")
    parser.add_argument("--alias", default="production")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the file mlflow predict also scores")
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the large file (0: none)")
    parser.add_argument("--spark-master", default="local[2]", help="for the Spark line (default: local[2])")
    parser.add_argument("--no-spark", action="store_true", help="leave the Spark engine's line out")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temp files (default: the system's)")
    parser.add_argument(
        "--data", type=Path, default=None, help="keep the generated CSVs in this folder and reuse them next time"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the floor and score this many times each, alternating; keep the fastest of each (default 1)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be 1 or more, got {args.repeat}")
    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")

    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    version = str(client.get_model_version_by_alias(args.model, args.alias).version)
    no_spark = "--no-spark" if args.no_spark else spark_available()
    sizes = sorted({n for n in (args.rows, args.big_rows) if n > 0})
    print(
        f"model {args.model} version {version} (@{args.alias}); {os.cpu_count()} CPUs; Python {sys.version.split()[0]}"
    )
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    results: dict[int, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="score-bench-", dir=args.tmp) as tmp:
        work = Path(tmp)
        kept = args.data or work
        kept.mkdir(parents=True, exist_ok=True)
        files = {n: kept / f"customers-{n}-seed{SEED}.csv" for n in sizes}
        missing = {files[n]: n for n in sizes if not files[n].exists()}
        if missing:  # all together: the smaller file is the larger one's first rows; renamed once complete
            generate({f.with_suffix(".partial"): n for n, f in files.items()})
            for f in files.values():
                f.with_suffix(".partial").replace(f)
        else:
            print(f"  input: {', '.join(str(f) for f in files.values())}, generated by an earlier run", file=sys.stderr)
        warm = work / "warm-up.csv"  # one untimed run: a cold page cache or first import is no one's figure
        with files[sizes[0]].open() as src, warm.open("w") as dst:
            dst.writelines(line for _, line in zip(range(1001), src, strict=False))
        run([sys.executable, "-m", "pipeline", "score", "--input", str(warm), "--output", str(work / "warm-out.csv"),
             "--version", version], work / "warm-up").check("warm-up score")  # fmt: skip
        for n in sizes:
            mlflow_here = n == args.rows
            master = None if no_spark or n != args.rows else args.spark_master
            lines, facts = measure(files[n], n, work, version, args.model, mlflow_here, master, args.repeat)
            table(n, files[n].stat().st_size, lines)
            if not mlflow_here:
                print(f"  {'mlflow models predict':<38} not run: it reads the whole file into memory (on 10M rows "
                      "issue 20 saw it OOM-killed after 24 GB)")  # fmt: skip
            results[n] = facts
            if args.data is None:
                files[n].unlink()

    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if no_spark:
        print(f"Spark engine not measured: {no_spark}")
    print("\ngoals")
    ok = True
    for n in sizes:
        facts = results[n]
        score, floor = facts["score"], facts["floor"]
        assert isinstance(score, Line) and isinstance(floor, Line) and score.run
        share = score.rate / floor.rate
        if n >= FLOOR_GOAL_ROWS:
            print(f"  {n:>12,} rows: score {share:.0%} of the I/O floor's rows/s (>= {FLOOR_SHARE_GOAL:.0%}): "
                  f"{verdict(share >= FLOOR_SHARE_GOAL)}")  # fmt: skip
        else:
            print(f"  {n:>12,} rows: score {share:.0%} of the I/O floor (judged from {FLOOR_GOAL_ROWS:,} rows)")
        mlflow = facts.get("mlflow")
        if isinstance(mlflow, Line):
            ratio = score.rate / mlflow.rate
            print(f"  {n:>12,} rows: score {ratio:.1f}x mlflow models predict (>= {MLFLOW_RATIO_GOAL:g}x): "
                  f"{verdict(ratio >= MLFLOW_RATIO_GOAL)}")  # fmt: skip
            identical = facts["identical"]
            assert isinstance(identical, tuple)
            same, how = identical
            ok = ok and bool(same)
            print(f"  {n:>12,} rows: identical predictions to mlflow's: {how}")
        print(f"  {n:>12,} rows: score's peak RSS {score.run.maxrss / MB:,.0f} MB (< {RSS_GOAL / MB:,.0f} MB): "
              f"{verdict(score.run.maxrss < RSS_GOAL)}; whole tree {score.run.tree_peak / MB:,.0f} MB")  # fmt: skip
    if args.rows not in results:
        print("  mlflow models predict not run: --rows is 0")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
