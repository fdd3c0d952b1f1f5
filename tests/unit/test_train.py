import pytest

from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, ModelParams
from pipeline.core.data import prepare
from pipeline.core.train import evaluate, train

from ..families import FAMILY_NAMES, TEAM_FEATURES, quick_params


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


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_training_is_deterministic_for_a_seed(churn, kind):
    first = train(churn, quick_params(kind, features=TEAM_FEATURES), 0.2, 7).metrics
    again = train(churn, quick_params(kind, features=TEAM_FEATURES), 0.2, 7).metrics
    first.pop("training_time_s"), again.pop("training_time_s")
    assert first == again


@pytest.mark.parametrize("kind", FAMILY_NAMES)
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


def test_the_team_feature_example_improves_or_matches_f1_on_the_default_data(churn):
    plain = train(churn, ModelParams(), 0.2, 42)
    featured = train(churn, ModelParams(features=TEAM_FEATURES), 0.2, 42)
    # the steps run first and their columns reach the model: the ratio as a number, the bucket as a category
    names = [name for name, _ in featured.model.steps]
    assert names == [*TEAM_FEATURES, "preprocess", "classifier"]
    blocks = {name: list(columns) for name, _, columns in featured.model.named_steps["preprocess"].transformers_}
    assert "charges_per_tenure_month" in blocks["numeric"] and "tenure_bucket" in blocks["categorical"]
    assert featured.metrics["f1"] >= plain.metrics["f1"]
