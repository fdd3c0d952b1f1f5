"""Benchmark: live drift counting per request, before and after issue 31, and what the sampling keeps of the alerts.

Usage (from the project root; the registry's version after `make demo`, else a model trained here):
    .venv/bin/python benchmarks/live_counting.py [--windows 100] [--rounds 7]   # --windows 0: no simulation
    .venv/bin/python benchmarks/live_counting.py --wrk [--duration 10] [--connections 8]   # and end to end

1. In process: `LiveStats.record` for a 1-record and a 1,000-record /predict
   body, against the old algorithm (every value of every record binned, kept
   here verbatim as `old_add`, so both run in the same process on the same
   columns) and against what the request's decode, predict and encode cost.
2. Sensitivity: seeded 15-minute windows of traffic from the version's test
   set (its training population), unshifted or shifted on one feature to a
   PSI past the warning or the alert level (params.yaml `monitoring:`),
   counted both ways; each feature's PSI as the recording rules compute it
   (gates.psi: the same formula and floor), a window firing only with at
   least 500 values counted (deploy/prometheus/rules.yml). Then one hostile
   batch of 10,000 records with a contract training never saw, in a quiet
   window of 9,000 one-record requests.
3. With --wrk: 1,000-record /predict rows/s through `python -m api` (as
   shipped), the same API with the old counting (this script as its launcher:
   `--serve-with-old-counting` patches `VersionCounts.add` back, then starts
   `python -m api`'s main), and the raw ASGI ceiling (benchmarks/noop_app.py),
   in alternating rounds, wrk as benchmarks/serve_vs_mlflow.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.live_bins import SAMPLED_RECORDS  # noqa: E402
from api.live_stats import LiveStats, VersionCounts  # noqa: E402
from api.metrics import ServiceMetrics  # noqa: E402
from api.model.loaded_model import LoadedModel  # noqa: E402
from benchmarks.versions import registry_version, trained_version  # noqa: E402
from gates.psi import psi  # noqa: E402
from pipeline.core.params_file import load_params  # noqa: E402

GOAL_E2E = 0.75  # issue 31: 1,000-record /predict rows/s against the raw ASGI app's, live counting on
LEVELS = load_params(ROOT / "params.yaml").monitoring


def alerts_floor() -> int:
    """The values a window needs before either drift alert may fire, as deploy/prometheus/rules.yml says."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ChurnApiFeatureDrift")
    found = re.search(r"api:feature_count:15m >= (\d+)", expr)
    if found is None:
        raise ValueError(f"ChurnApiFeatureDrift names no floor of values: {expr}")
    return int(found[1])


ALERTS_FLOOR = alerts_floor()


def old_add(
    self: VersionCounts,
    columns: Any,
    labels: Sequence[Any],
    probabilities: Sequence[float] | None,
    sizes: Sequence[int] | None = None,
) -> None:
    """VersionCounts.add before issue 31 (commit fa2e301), verbatim: every value of every record binned."""
    positive = self.model.positive_label
    with self.lock:
        self.predictions += len(labels)
        self.positives += sum(1 for label in labels if label == positive)
        if probabilities is not None:
            self._scores(probabilities)
        if len(labels) == 1:
            self._one(columns)
            return
        for bins in self.model.drift_bins:
            values = columns.get(bins.name)
            if values is not None:
                bins.observe(values)


# --- the version ------------------------------------------------------------------------------------------------


# --- 1. in process --------------------------------------------------------------------------------------------


def timed(step: Callable[[], object], reps: int, rounds: int) -> float:
    """Median over rounds of the mean seconds a call, after one warm-up call."""
    step()
    means = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(reps):
            step()
        means.append((time.perf_counter() - started) / reps)
    return statistics.median(means)


def in_process(model: LoadedModel, X: pd.DataFrame, rounds: int) -> dict[int, dict[str, float]]:
    """Seconds a request: decode+predict+encode, counting as shipped and as before; for 1 and 1,000 records."""
    records = json.loads(X.to_json(orient="records"))
    out = {}
    for n in (1, 1000):
        body = orjson.dumps({"records": (records * (n // len(records) + 1))[:n]})
        columns = model.request_columns(body)
        prediction = model.predict_columns(columns)
        reps = 2000 if n == 1 else 100

        def request(body: bytes = body) -> None:
            decoded = model.request_columns(body)
            answer = model.predict_columns(decoded)
            orjson.dumps({"model_version": "1", "predictions": answer.labels, "probabilities": answer.probabilities})

        stats, before = LiveStats(ServiceMetrics()), VersionCounts(model)
        answer = (columns, prediction.labels, prediction.probabilities)
        out[n] = {
            "request": timed(request, reps, rounds),
            "new": timed(partial(stats.record, model, *answer), reps, rounds),
            "old": timed(partial(old_add, before, *answer), reps, rounds),
        }
        stats.counts(model).take()
        before.take()
    return out


# --- 2. sensitivity -------------------------------------------------------------------------------------------

Columns = dict[str, Any]


def pool_of(model: LoadedModel, rows: pd.DataFrame) -> Columns:
    """Records as the /predict decoder gives them: float arrays for numeric features, lists for the others."""
    numeric = {b.name for b in model.drift_bins if b.edges is not None}
    return {c: np.array(rows[c], dtype=float) if c in numeric else rows[c].tolist() for c in rows.columns}


def draw(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    return frame.iloc[rng.integers(0, len(frame), n)].reset_index(drop=True)


class Windows:
    """Windows of requests cut from a large pool of one population's records, counted sampled and exactly."""

    def __init__(self, model: LoadedModel, rows: pd.DataFrame, rng: np.random.Generator, pool: int = 200_000):
        self.model, self.rng = model, rng
        self.columns, self.size = pool_of(model, draw(rows, pool, rng)), pool
        self.expected = {b.name: b.expected for b in model.drift_bins}
        self.counts = VersionCounts(model, rng=rng)

    def psi(self, sizes: Sequence[int]) -> tuple[dict[str, float], dict[str, float], int]:
        """Each feature's PSI over one window of requests of these sizes: (sampled, exact, values sampled)."""
        starts = self.rng.integers(0, self.size - max(sizes), len(sizes))
        found = []
        for sampled in (True, False):  # the counts live in the version's bins: one way taken before the other
            for start, n in zip(starts.tolist(), sizes, strict=True):
                request = {name: values[start : start + n] for name, values in self.columns.items()}
                self.counts.add(request, ["No"] * n, None, (n,) if sampled else None)
            bins = self.counts.take()[4]
            found.append({name: psi(self.expected[name], shares(c)) for name, _, c in bins})
        return found[0], found[1], sum(min(n, SAMPLED_RECORDS) for n in sizes)


def shares(counts: Sequence[float]) -> list[float]:
    whole = sum(counts)
    return [c / whole for c in counts] if whole else [0.0] * len(counts)


def population_psi(model: LoadedModel, rows: pd.DataFrame, feature: str) -> float:
    """One feature's PSI of a population, every value of 50,000 records counted."""
    windows = Windows(model, rows, np.random.default_rng(0), pool=50_001)
    return windows.psi([50_000])[1][feature]


def shifted(model: LoadedModel, X: pd.DataFrame, feature: str, subset: pd.Series, target: float) -> pd.DataFrame:
    """X with the records of `subset` over-represented until `feature`'s PSI is about `target` (bisection)."""
    inside, outside = X[subset], X[~subset]
    low, high, rng = 0.0, 1.0, np.random.default_rng(1)
    mixed = X
    for _ in range(10):
        weight = (low + high) / 2
        n = int(20_000 * weight)
        mixed = pd.concat([draw(inside, n, rng), draw(outside, 20_000 - n, rng)]).reset_index(drop=True)
        if population_psi(model, mixed, feature) < target:
            low = weight
        else:
            high = weight
    return mixed


TRAFFIC = {  # name: (windows' share of --windows, request sizes in a 15-minute window)
    "quiet: 20 batches of 1,000": (1.0, [1000] * 20),
    "mixed: 1,000 requests, 80 % of 1 record, 15 % of 10, 5 % of 1,000": (0.5, None),
    "busy: 900 batches of 1,000 (one a second)": (0.05, [1000] * 900),
}


def sensitivity(model: LoadedModel, X: pd.DataFrame, windows: int) -> None:
    print("\n2. Sensitivity: seeded 15-minute windows, each counted sampled (as shipped) and exactly (as before)")
    print(f"   levels (params.yaml monitoring): warn {LEVELS.drift_warn_psi}, alert {LEVELS.drift_alert_psi}; a window "
          f"fires only with >= {ALERTS_FLOOR} values; sample: {SAMPLED_RECORDS} records a request")  # fmt: skip
    populations: dict[str, tuple[pd.DataFrame, str | None]] = {"unshifted": (X, None)}
    contract, tenure = X["Contract"] == "Month-to-month", X["tenure"] <= X["tenure"].quantile(0.25)
    for level, name in ((0.15, "warn"), (0.35, "alert")):
        populations[f"Contract shifted, PSI ~{level} ({name})"] = (
            shifted(model, X, "Contract", contract, level),
            "Contract",
        )
        populations[f"tenure shifted, PSI ~{level} ({name})"] = (shifted(model, X, "tenure", tenure, level), "tenure")
    rng = np.random.default_rng(31)
    print(f"\n   {'traffic / population':<52} {'windows':>7} {'exact PSI':>9} {'sampled':>8} {'|diff| p95':>10} "
          f"{'sampled fires warn/alert':>25} {'exact fires warn/alert':>23}")  # fmt: skip
    for traffic, (share, sizes) in TRAFFIC.items():
        n_windows = max(2, int(windows * share))
        print(f"   {traffic}")
        for population, (rows, feature) in populations.items():
            counter = Windows(model, rows, rng)
            results = []
            for _ in range(n_windows):
                window = sizes or rng.choice([1, 10, 1000], 1000, p=[0.8, 0.15, 0.05]).tolist()
                results.append(counter.psi(window))
            sampled = np.asarray([of(s, feature) for s, _, _ in results])
            exact = np.asarray([of(e, feature) for _, e, _ in results])
            enough = np.asarray([values >= ALERTS_FLOOR for _, _, values in results])
            fires = {
                side: "/".join(f"{np.mean((psi_ >= level) & enough):>5.0%}" for level in (LEVELS.drift_warn_psi,
                                                                                        LEVELS.drift_alert_psi))
                for side, psi_ in (("sampled", sampled), ("exact", exact))
            }  # fmt: skip
            label = population + ("" if feature else " (max over features)")
            diff = np.percentile(np.abs(sampled - exact), 95)
            print(f"     {label:<50} {n_windows:>7} {exact.mean():>9.3f} {sampled.mean():>8.3f} {diff:>10.3f} "
                  f"{fires['sampled']:>25} {fires['exact']:>23}")  # fmt: skip
    hostile(model, X)


def of(found: dict[str, float], feature: str | None) -> float:
    """The shifted feature's PSI; with none shifted, the largest (any feature firing is a false alarm)."""
    return max(found.values()) if feature is None else found[feature]


def hostile(model: LoadedModel, X: pd.DataFrame) -> None:
    """One batch of 10,000 records of an unseen contract, in a quiet window of 9,000 one-record requests."""
    rng = np.random.default_rng(8)
    singles = pool_of(model, draw(X, 9000, rng))
    bad_rows = draw(X, 10_000, rng)
    bad_rows["Contract"] = "Ten year"
    bad = pool_of(model, bad_rows)
    expected = next(b.expected for b in model.drift_bins if b.name == "Contract")
    counts = VersionCounts(model, rng=rng)
    found: dict[str, list[float]] = {"sampled": [], "exact": []}
    for side in found:
        counts.add(singles, ["No"] * 9000, None, [1] * 9000 if side == "sampled" else None)
        taken = np.zeros(len(expected))
        for _ in range(20):  # batch after batch: the window's Contract PSI after each
            counts.add(bad, ["No"] * 10_000, None, (10_000,) if side == "sampled" else None)
            for name, _, c in counts.take()[4]:
                if name == "Contract":
                    taken += c
            found[side].append(psi(expected, shares(taken.tolist())))
            if found[side][-1] > 5:
                break
        counts.take()
    print("\n   one hostile client: batches of 10,000 records of a contract training never saw (__unseen__), in a "
          "quiet window of 9,000 one-record requests (10 a second)")  # fmt: skip
    for side, series in found.items():
        first = {level: next((i + 1 for i, v in enumerate(series) if v >= level), None)
                 for level in (LEVELS.drift_warn_psi, LEVELS.drift_alert_psi)}  # fmt: skip
        said = ", ".join(f"{'>20' if n is None else n} to pass {level}" for level, n in first.items())
        print(f"     {side:<8} Contract PSI after one batch: {series[0]:.3f}; batches needed: {said}")


# --- 3. end to end --------------------------------------------------------------------------------------------


def end_to_end(args: argparse.Namespace, records: list[dict]) -> bool | None:
    """1,000-record /predict rows/s: this API, the API with the old counting, the raw ASGI app; None: no registry."""
    from mlflow.tracking import MlflowClient

    from benchmarks.serve_vs_mlflow import noop_serve, serving, wrk
    from pipeline.runtime.processes import free_port

    try:
        version = str(MlflowClient().get_model_version_by_alias(args.model, args.alias).version)
    except Exception:
        print("\n3. End to end: skipped, no registry with the version (make demo first)")
        return None
    body = json.dumps({"records": (records * (1000 // len(records) + 1))[:1000]})
    env = {**os.environ, "MODEL_NAME": args.model, "MODEL_VERSION": version, "HOST": "127.0.0.1",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    commands = {
        "API (as shipped)": [sys.executable, "-m", "api"],
        "API, old counting": [sys.executable, str(Path(__file__).resolve()), "--serve-with-old-counting"],
    }
    figures: dict[str, list[dict]] = {side: [] for side in (*commands, "raw ASGI app")}
    with contextlib.ExitStack() as stack:
        urls = {}
        for side, command in commands.items():
            port = free_port()
            urls[side] = stack.enter_context(serving(command, "/ready", port, env={**env, "PORT": str(port)}))
        urls["raw ASGI app"] = stack.enter_context(noop_serve())
        for url in urls.values():  # warm up
            wrk(url + "/predict", body, 2, args.connections)
        order = list(urls)
        for i in range(args.rounds_wrk):
            for side in order if i % 2 == 0 else reversed(order):
                figures[side].append(wrk(urls[side] + "/predict", body, args.duration, args.connections))
                time.sleep(1)
    rows = {side: statistics.median(f["rps"] for f in runs) * 1000 for side, runs in figures.items()}
    ceiling = rows["raw ASGI app"]
    print(f"\n3. End to end: 1,000-record /predict, version {version}; wrk 2 threads on CPU 0, "
          f"{args.connections} connections, {args.rounds_wrk} alternating rounds of {args.duration}s, medians; "
          "one uvicorn worker each")  # fmt: skip
    print(f"   {'':<20} {'rows/s':>10} {'of raw':>7}  rounds (rows/s)")
    for side, runs in figures.items():
        rounds = ", ".join(f"{f['rps'] * 1000:,.0f}" for f in runs)
        errors = sum(f["errors"] for f in runs)
        print(f"   {side:<20} {rows[side]:>10,.0f} {rows[side] / ceiling:>7.0%}  {rounds}"
              + (f"; {errors:,} non-2xx answers" if errors else ""))  # fmt: skip
    met = rows["API (as shipped)"] / ceiling >= GOAL_E2E and not any(f["errors"] for f in figures["API (as shipped)"])
    print(f"   goal: the API at >= {GOAL_E2E:.0%} of the raw ASGI app's rows/s: {'met' if met else 'MISSED'}")
    return met


def serve_with_old_counting() -> None:
    """`python -m api` with VersionCounts.add as it was before issue 31 (one worker: the patch holds)."""
    from api import __main__ as entry

    if int(os.environ.get("WEB_CONCURRENCY") or 1) != 1:
        sys.exit("one worker only: further workers would import the app unpatched")
    VersionCounts.add = old_add  # type: ignore[method-assign]
    entry.main()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="churn-classifier")
    parser.add_argument("--alias", default="production")
    parser.add_argument("--rounds", type=int, default=7, help="in-process timing rounds (medians)")
    parser.add_argument("--windows", type=int, default=100, help="simulated quiet windows a population (0: none)")
    parser.add_argument("--wrk", action="store_true", help="also the end-to-end figure (needs wrk and a registry)")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds-wrk", type=int, default=3)
    parser.add_argument("--serve-with-old-counting", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_with_old_counting:
        serve_with_old_counting()
        return 0
    found = registry_version(args.model, args.alias) or trained_version()
    model, X, where = found
    print(f"live counting, {where}: {len(model.drift_bins)} features with drift bins; {os.cpu_count()} CPUs, "
          "shared with whatever else runs: compare sides of one run, not runs")  # fmt: skip

    cost = in_process(model, X, args.rounds)
    print(f"\n1. In process, µs a request (medians of {args.rounds} rounds): decode + predict + encode, and "
          "LiveStats.record as shipped and before")  # fmt: skip
    print(f"   {'records':>7} {'request':>9} {'old record':>11} {'new record':>11} {'old share':>10} {'new share':>10}"
          f" {'speed-up':>9}")  # fmt: skip
    for n, c in cost.items():
        print(f"   {n:>7,} {c['request'] * 1e6:>9.1f} {c['old'] * 1e6:>11.1f} {c['new'] * 1e6:>11.1f} "
              f"{c['old'] / (c['request'] + c['old']):>10.1%} {c['new'] / (c['request'] + c['new']):>10.1%} "
              f"{c['old'] / c['new']:>8.1f}x")  # fmt: skip
    print("   share: of the request's decode + predict + encode + counting")

    if args.windows > 0:
        sensitivity(model, X, args.windows)
    else:
        print("\n2. Sensitivity: not run (--windows 0)")
    met = None
    if args.wrk:
        met = end_to_end(args, json.loads(X.to_json(orient="records")))
    else:
        print("\n3. End to end: not run (--wrk)")
    print(f"\ngoal (issue 31, item 1): 1,000-record /predict at >= {GOAL_E2E:.0%} of the raw ASGI app's rows/s with "
          f"live counting on: {'not measured' if met is None else 'met' if met else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
