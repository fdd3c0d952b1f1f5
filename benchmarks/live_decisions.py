"""Benchmark: how the live decisions behave, by simulation of the very rules rollout and watch use.

Usage (from the project root):
    .venv/bin/python benchmarks/live_decisions.py [--runs 1000] [--rate 50] [--seed 1] [--params params.yaml]

Honest traffic is drawn from the generated churn data (each request one
customer, its positive label the row's label, each rollout with its own key
for the split). For each scenario, `--runs` rollouts (or bakes) run poll by
poll with the params' settings; the table gives how often the rollout aborted
(or the bake rolled back), with a 95 % Clopper-Pearson interval, and the
median counted requests it took to abort or to pass. Goals (issue 25): an
identical candidate and a healthy production are acted on at most α of the
time; each worse candidate is caught in at least 95 % of runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.churn_data import generate_churn
from pipeline.core.decision_simulation import bake_scenarios, rollout_scenarios, simulate
from pipeline.core.params_file import load_params


def interval(acted: int, runs: int) -> str:
    low = stats.beta.ppf(0.025, acted, runs - acted + 1) if acted else 0.0
    high = stats.beta.ppf(0.975, acted + 1, runs - acted) if acted < runs else 1.0
    return f"{low:.1%}-{high:.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="counted requests per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params).rollout
    pool = (generate_churn(7043, 42)["Churn"] == "Yes").to_numpy()
    print(f"α {params.alpha}, power {params.power}, {args.runs} runs per scenario, {args.rate:g} requests/s, "
          f"positive share of the data {pool.mean():.1%}\n")  # fmt: skip
    print("| decision | candidate | should act | acted | 95 % interval | goal | median requests to act | "
          "median requests to pass | seconds |")  # fmt: skip
    print("|---|---|---|---:|---|---|---:|---:|---:|")
    failed = False
    for bake, scenarios in ((False, rollout_scenarios(params)), (True, bake_scenarios(params))):
        for number, scenario in enumerate(scenarios):
            started = time.monotonic()
            out = simulate(params, scenario, args.runs, args.seed + number, pool, args.rate, bake=bake)
            goal_met = out.share_acted >= params.power if scenario.worse else out.share_acted <= params.alpha
            failed |= not goal_met
            goal = f"≥ {params.power:.0%}" if scenario.worse else f"≤ {params.alpha:.0%}"
            act = statistics.median(out.requests_to_act) if out.requests_to_act else "-"
            passed = statistics.median(out.requests_to_pass) if out.requests_to_pass else "-"
            verdict = "met" if goal_met else "MISSED"
            print(f"| {'bake' if bake else 'rollout'} | {scenario.name} | {'yes' if scenario.worse else 'no'} "
                  f"| {out.share_acted:.1%} | {interval(out.acted, out.runs)} | {goal} {verdict} "
                  f"| {act} | {passed} | {time.monotonic() - started:.0f} |", flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
