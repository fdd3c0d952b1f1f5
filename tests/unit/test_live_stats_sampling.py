"""Live counting: at most SAMPLED_RECORDS records a request binned, whole columns at once, the alerts still served.

Each request's predictions, positives and scores are counted whole; its
feature values from at most SAMPLED_RECORDS of its records, drawn at random
(api/live_bins.py). The seeded simulations below state what that keeps of the
drift alerts (deploy/prometheus/rules.yml, params.yaml `monitoring:`): the PSI
of the sampled counts against exact counting, a shift above the alert level
caught, and one huge batch kept from swamping a window.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.live_bins import SAMPLED_RECORDS
from api.live_stats import LiveStats, VersionCounts
from api.metrics import ServiceMetrics
from api.model.drift import drift_bins
from gates.profile import profile
from gates.psi import psi
from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.params_file import load_params
from pipeline.core.train import train
from tests.api.conftest import make_model

ROOT = Path(__file__).resolve().parents[2]
LEVELS = load_params(ROOT / "params.yaml").monitoring  # the alerts' PSI levels


def alerts_floor() -> int:
    """The values a window needs before either drift alert may fire, as deploy/prometheus/rules.yml says."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ChurnApiFeatureDrift")
    found = re.search(r"api:feature_count:15m >= (\d+)", expr)
    if found is None:
        raise ValueError(f"ChurnApiFeatureDrift names no floor of values: {expr}")
    return int(found[1])


ALERTS_FLOOR = alerts_floor()


@pytest.fixture(scope="module")
def trained():
    return train(prepare(generate_churn(800, 3).astype(str), DataParams()), ModelParams(), test_size=0.25, seed=3)


@pytest.fixture
def model(trained):
    """A real version carrying its training profile's drift bins."""
    X = trained.split.X_train
    kinds = {c: "numeric" if X[c].dtype.kind == "f" else "categorical" for c in X.columns}
    loaded = make_model(trained, "7", max_batch_size=20_000)
    loaded.drift_bins = drift_bins(profile(X, kinds), list(X.columns))
    loaded.training_rows = X  # the population the profile describes, to draw served records from
    return loaded


def draw(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """n records drawn with replacement from a frame."""
    return frame.iloc[rng.integers(0, len(frame), n)].reset_index(drop=True)


def columns_of(rows, numeric: set[str]) -> dict:
    """Rows of the training frame as a decoder gives them: float arrays for numbers, lists for text."""
    return {c: np.array(rows[c], dtype=float) if c in numeric else rows[c].tolist() for c in rows.columns}


def numeric_of(model) -> set[str]:
    return {b.name for b in model.drift_bins if b.edges is not None}


def counted(counts: VersionCounts) -> dict[str, list[int]]:
    return {name: taken for name, _, taken in counts.take()[4]}


def value_by_value(model, columns: dict) -> dict[str, list[int]]:
    """The reference: every value binned on its own by the profile's FeatureBins (api/model/drift.py)."""
    out = {}
    for bins in model.drift_bins:
        for value in columns[bins.name]:
            bins.observe([value])
        out[bins.name] = bins.take()
    return out


def test_requests_within_the_sample_are_binned_as_value_by_value_missing_unseen_and_infinite_included(model):
    # given: 50 records with missing numbers (NaN in arrays, None in lists), infinities, unseen and missing text
    X = draw(model.training_rows, 50, np.random.default_rng(1))
    columns = columns_of(X, numeric_of(model))
    columns["tenure"][[0, 1, 2]] = [np.nan, np.inf, -np.inf]
    columns["MonthlyCharges"] = [None, *columns["MonthlyCharges"][1:].tolist()]  # a list, as the slow path gives
    columns["Contract"][:3] = ["Ten year", None, float("nan")]
    expected = value_by_value(model, columns)
    counts = VersionCounts(model, rng=np.random.default_rng(2))
    # when: counted as one request of 50 records, then as 50 requests joined
    counts.add(columns, ["Yes"] * len(X), None, (len(X),))
    one_request = counted(counts)
    counts.add(columns, ["Yes"] * len(X), None, [1] * len(X))
    # then: every value is in the bin value-by-value binning gives it, both ways
    assert one_request == expected
    assert counted(counts) == expected
    assert expected["tenure"][-1] == 1 and expected["Contract"][-1] == 2 and expected["Contract"][-2] == 1


def test_a_large_request_bins_the_sample_and_counts_every_prediction(model):
    # given: one request of 5,000 records
    rng = np.random.default_rng(3)
    rows = draw(model.training_rows, 5000, rng)
    columns = columns_of(rows, numeric_of(model))
    labels = rng.choice(["Yes", "No"], 5000).tolist()
    probabilities = rng.random(5000).tolist()
    stats = LiveStats(ServiceMetrics(), seed=4)
    # when: it is recorded, with a one-record request and a 10-record one
    stats.record(model, columns, labels, probabilities)
    one = {name: values[:1] for name, values in columns.items()}
    ten = {name: values[:10] for name, values in columns.items()}
    stats.record(model, one, labels[:1], probabilities[:1])
    stats.record(model, ten, labels[:10], probabilities[:10])
    predictions, positives, scores, _, bins = stats.counts(model).take()
    # then: predictions, positives and scores count every record
    assert predictions == 5011
    assert positives == labels.count("Yes") + labels[:1].count("Yes") + labels[:10].count("Yes")
    assert sum(scores) == 5011
    # and each feature's bins hold the large request's sample, and the small ones whole
    assert {name: sum(taken) for name, _, taken in bins} == {b.name: SAMPLED_RECORDS + 11 for b in model.drift_bins}


def test_a_large_predict_batch_through_the_app_counts_every_prediction_and_a_sample_of_its_values(model):
    # given: the app serving the version
    rows = draw(model.training_rows, 1000, np.random.default_rng(9))
    records = json.loads(rows.to_json(orient="records"))
    with TestClient(create_app(ModelHolder(model=model))) as client:
        # when: one 1,000-record batch is predicted
        answer = client.post("/predict", json={"records": records})
        text = client.get("/metrics").text
    assert answer.status_code == 200, answer.text
    # then: every record is a prediction, and each feature counted the values of SAMPLED_RECORDS of them
    assert metric(text, 'api_predictions_total{version="7"}') == 1000
    for bins in model.drift_bins:
        assert metric(text, "api_feature_values_total{", f'feature="{bins.name}"') == SAMPLED_RECORDS, bins.name


def metric(text: str, start: str, *having: str) -> float:
    """The sum of the samples in Prometheus text whose line starts so and holds each label given."""
    lines = [line for line in text.splitlines() if line.startswith(start) and all(h in line for h in having)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_joined_requests_are_each_sampled_on_their_own(model):
    # given: three requests joined (as the shadow scorer joins copies): 10, 3,000 and 1 records
    rng = np.random.default_rng(5)
    rows = draw(model.training_rows, 3011, rng)
    rows.loc[10:3009, "Contract"] = "Ten year"  # the large one sends a contract never seen in training
    counts = VersionCounts(model, rng=np.random.default_rng(6))
    # when: counted with their sizes
    counts.add(columns_of(rows, numeric_of(model)), ["No"] * 3011, None, (10, 3000, 1))
    contract = counted(counts)["Contract"]
    # then: the large one weighs SAMPLED_RECORDS values, the others theirs
    assert sum(contract) == 10 + SAMPLED_RECORDS + 1
    assert contract[-2] == SAMPLED_RECORDS  # __unseen__


def test_a_sample_smaller_than_two_records_is_refused(model):
    with pytest.raises(ValueError, match="at least 2"):
        VersionCounts(model, sample=1)


# Sensitivity: seeded 15-minute windows, each feature's PSI as the recording rules compute it (gates.psi: the same
# formula and floor), from sampled counts and from exact ones (every value of every record, as before).


def window_psi(model, requests: list[pd.DataFrame], rng: np.random.Generator) -> tuple[dict, dict, int]:
    """Each feature's PSI over a window of requests, counted sampled and exactly; and the values sampled a feature.

    Counts live in the version's bins: one way is counted and taken before the other.
    """
    numeric = numeric_of(model)
    expected = {b.name: b.expected for b in model.drift_bins}
    counts = VersionCounts(model, rng=rng)
    found = []
    for sampled in (True, False):
        for rows in requests:
            counts.add(columns_of(rows, numeric), ["No"] * len(rows), None, (len(rows),) if sampled else None)
        bins = counted(counts)
        found.append({name: psi(expected[name], (np.asarray(c) / sum(c)).tolist()) for name, c in bins.items()})
    return found[0], found[1], sum(min(len(rows), SAMPLED_RECORDS) for rows in requests)


def contracts(model, month_to_month: float) -> pd.DataFrame:
    """Training records with this share of month-to-month contracts (training: 0.56), 20,000 of them."""
    X, rng = model.training_rows, np.random.default_rng(0)
    monthly = X["Contract"] == "Month-to-month"
    n = int(20_000 * month_to_month)
    return pd.concat([draw(X[monthly], n, rng), draw(X[~monthly], 20_000 - n, rng)]).sample(frac=1, random_state=0)


def test_a_quiet_window_of_large_batches_catches_a_shift_past_the_alert_level_and_nothing_without_one(model):
    # given: quiet 15-minute windows: 20 batches of 1,000 records (1,280 values sampled a feature, past the
    # alerts' floor of 500), from the training population or one whose contracts shifted (PSI about 0.36)
    rng = np.random.default_rng(7)
    population = {"same": model.training_rows, "shifted": contracts(model, 0.83)}
    for window in range(10):
        for name, rows in population.items():
            # when: each window is counted sampled and exactly
            sampled, exact, values = window_psi(model, [draw(rows, 1000, rng) for _ in range(20)], rng)
            assert values >= ALERTS_FLOOR
            # then: without a shift no feature warns; the shifted contracts alert, sampled as exactly counted
            if name == "same":
                assert max(sampled.values()) < LEVELS.drift_warn_psi, (window, sampled)
            else:
                assert exact["Contract"] > LEVELS.drift_alert_psi
                assert sampled["Contract"] > LEVELS.drift_alert_psi, (window, sampled["Contract"], exact["Contract"])
            # and the sampled PSI is close to the exact one
            assert abs(sampled["Contract"] - exact["Contract"]) < 0.12, (window, name)


def test_one_huge_batch_weighs_as_a_sample_not_as_its_records(model):
    # given: a quiet service's window, 9,000 one-record requests (10 a second), and one batch of 10,000 records
    # all with a contract training never saw
    rng = np.random.default_rng(8)
    singles = draw(model.training_rows, 9000, rng)
    hostile = draw(model.training_rows, 10_000, rng)
    hostile["Contract"] = "Ten year"
    counts = VersionCounts(model, rng=rng)
    expected = next(b.expected for b in model.drift_bins if b.name == "Contract")
    found = {}
    for side, sizes in (("sampled", [1] * 9000), ("exact", None)):
        # when: the window is counted, the batch sampled or every record of it
        counts.add(columns_of(singles, numeric_of(model)), ["No"] * 9000, None, sizes)
        counts.add(columns_of(hostile, numeric_of(model)), ["No"] * 10_000, None, (10_000,) if sizes else None)
        contract = counted(counts)["Contract"]
        found[side] = psi(expected, (np.asarray(contract) / sum(contract)).tolist())
    # then: counted whole, the one batch is most of the window and alerts; sampled, it is 64 values of 9,064
    assert found["exact"] > LEVELS.drift_alert_psi
    assert found["sampled"] < LEVELS.drift_warn_psi, found
