"""What the API exports per version: scores, positives, and each served value in its training-profile bin."""

import re

from fastapi.testclient import TestClient

from api.app import create_app
from api.holder import ModelHolder
from api.model.drift import drift_bins
from gates.profile import profile

from .conftest import make_model


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, its labels in any order."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels}")


def test_served_values_scores_and_positives_are_counted_per_version(trained, records):
    # given: a version that carries the profile of its training data
    model = make_model(trained, "7")
    X = trained.split.X_train
    kinds = {c: "numeric" if X[c].dtype.kind == "f" else "categorical" for c in X.columns}
    model.drift_bins = drift_bins(profile(X, kinds), list(X.columns))
    with TestClient(create_app(ModelHolder(model=model))) as client:
        # when: twenty records are predicted, one of them with a contract training never saw
        shifted = [*records[:19], {**records[19], "Contract": "Ten year"}]
        answer = client.post("/predict", json={"records": shifted[:10]}).json()  # a batch
        for record in shifted[10:]:  # and one record at a time (binned inline)
            one = client.post("/predict", json={"records": [record]}).json()
            for key in ("predictions", "probabilities"):
                answer[key] += one[key]
        text = client.get("/metrics").text
    # then: every value is in one bin of its feature, the unseen contract in __unseen__
    for feature in ("Contract", "tenure", "MonthlyCharges"):
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("api_feature_values_total{") and f'feature="{feature}"' in line and 'version="7"' in line
        )
        assert counted == 20, feature
    assert sample(text, "api_feature_values_total", version="7", feature="Contract", bin="__unseen__") == 1
    assert sample(text, "api_feature_expected_ratio", version="7", feature="Contract", bin="__unseen__") == 0
    assert 0 < sample(text, "api_feature_expected_ratio", version="7", feature="tenure", bin="q0") < 0.2
    # and the answers themselves: how many were positive, and their scores in buckets
    positives = sum(1 for label in answer["predictions"] if label == "Yes")
    assert sample(text, "api_positive_predictions_total", version="7") == positives
    assert sample(text, "api_score_count", version="7") == 20
    assert sample(text, "api_score_bucket", version="7", le="0.5") == sum(p <= 0.5 for p in answer["probabilities"])
    assert abs(sample(text, "api_score_sum", version="7") - sum(answer["probabilities"])) < 1e-9
