"""What the paired bootstrap costs and how much it resolves, on the default data.

Trains production (params.yaml's model) and three candidates in-process,
scores them on the same test rows and prints, side by side: each interval's
half-width and the time 1,000 paired resamples add against the time it takes
to score both models once (the gate's work without intervals).

    python benchmarks/gate_bootstrap.py
"""

from __future__ import annotations

import time
from pathlib import Path

from families import FAMILIES
from gates.bootstrap import METRICS, HeldOutAnswers, paired_bootstrap
from pipeline.core.churn_data import generate_churn
from pipeline.core.data import load_dataset
from pipeline.core.params_file import load_params
from pipeline.core.train import train

CANDIDATES = {
    "retrain of itself": {},
    "C=0.01 (a close retrain)": {"model.logistic_regression.C": "0.01"},
    **{name: {"model.type": name} for name in FAMILIES if name != "logistic_regression"},  # every other family
    "class_weight=null (weaker)": {"model.logistic_regression.class_weight": "null"},
}


def answers(result, positive: str) -> HeldOutAnswers:
    X = result.split.X_test
    column = list(result.model.classes_).index(positive)
    return HeldOutAnswers(result.model.predict(X) == positive, result.model.predict_proba(X)[:, column])


def main() -> None:
    params = load_params("params.yaml")
    if not Path(params.data.path).exists():
        Path(params.data.path).parent.mkdir(parents=True, exist_ok=True)
        generate_churn(params.data.rows, params.data.seed).to_csv(params.data.path, index=False)
    data = load_dataset(params.data)
    production = train(data, params.model, params.data.test_size, params.data.seed)
    y = (production.split.y_test == data.positive_label).to_numpy()
    gates = params.gates
    print(f"{len(y)} test rows, {gates.bootstrap_samples} resamples, {gates.confidence:.0%} intervals\n")
    print("| candidate | ΔF1 | ΔF1 CI | half-width | F1 CI half-width | bootstrap (5 metrics) | scoring both once |")
    print("|---|---|---|---|---|---|---|")
    for label, changes in CANDIDATES.items():
        candidate_params = load_params("params.yaml", [f"{k}={v}" for k, v in changes.items()])
        started = time.perf_counter()
        cand = train(data, candidate_params.model, params.data.test_size, params.data.seed)
        a, b = answers(cand, data.positive_label), answers(production, data.positive_label)
        scoring = time.perf_counter() - started - cand.metrics["training_time_s"]
        started = time.perf_counter()
        result = paired_bootstrap(y, a, b, list(METRICS), gates.bootstrap_samples, gates.confidence, params.data.seed)
        took = time.perf_counter() - started
        f1 = result["f1"]
        low, high = f1.delta_ci
        print(
            f"| {label} | {f1.delta:+.4f} | [{low:+.4f}, {high:+.4f}] | {(high - low) / 2:.4f} "
            f"| {(f1.candidate_ci[1] - f1.candidate_ci[0]) / 2:.4f} | {took * 1000:.0f} ms | {scoring * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
