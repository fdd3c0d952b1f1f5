import pytest

from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.train import evaluate, train


@pytest.fixture(scope="module")
def churn():
    return prepare(generate_churn(7043, 42).astype(str), DataParams())


def test_default_model_reaches_a_useful_f1_and_a_trivial_one_does_not(churn):
    result = train(churn, ModelParams(), test_size=0.2, seed=42)
    assert 0.55 < result.metrics["f1"] < 0.7
    assert result.metrics["roc_auc"] > 0.8
    # Predicting "churn" for everyone is the best trivial F1 on this data.
    share = (result.split.y_test == "Yes").mean()
    assert 2 * share / (1 + share) < result.metrics["f1"] - 0.15


def test_training_is_deterministic_for_a_seed(churn):
    first = train(churn, ModelParams(type="random_forest"), 0.2, 7).metrics
    again = train(churn, ModelParams(type="random_forest"), 0.2, 7).metrics
    first.pop("training_time_s"), again.pop("training_time_s")
    assert first == again


@pytest.mark.parametrize("kind", ["logistic_regression", "random_forest", "hist_gradient_boosting"])
def test_each_model_type_trains_and_reports_every_metric(churn, kind):
    result = train(churn, ModelParams(type=kind), 0.2, 42)
    assert set(result.metrics) == {"f1", "precision", "recall", "roc_auc", "accuracy", "training_time_s"}
    assert result.metrics["f1"] > 0.5


def test_evaluate_scores_the_named_positive_label(churn):
    result = train(churn, ModelParams(), 0.2, 42)
    as_yes = evaluate(result.model, result.split.X_test, result.split.y_test, "Yes")
    as_no = evaluate(result.model, result.split.X_test, result.split.y_test, "No")
    assert as_yes["accuracy"] == pytest.approx(as_no["accuracy"])
    assert as_yes["f1"] != as_no["f1"]
