"""`pipeline score`: a CSV scored by a released version, bad rows set aside with their reasons."""

import mlflow
import pandas as pd
import pytest

from pipeline.data import coerce_to_schema
from pipeline.tracking import load_feature_schema

from .test_flow import deploy

pytestmark = pytest.mark.integration


def test_score_writes_predictions_with_the_version_and_rejects_bad_rows_with_the_reason(project, cli):
    version = deploy(cli)
    frame = pd.read_csv("data/churn.csv", dtype=str, keep_default_na=False).head(500).drop(columns=["Churn"])
    frame.loc[3, "tenure"] = "abc"
    frame.loc[7, "gender"] = ""
    frame.loc[9, "MonthlyCharges"] = "1e999"
    frame.to_csv("in.csv", index=False)

    assert cli("score", "--input", "in.csv", "--output", "out/predictions.csv") == 0, cli.err
    scored = pd.read_csv("out/predictions.csv", dtype={"model_version": str})
    rejects = pd.read_csv("out/predictions.rejects.csv")
    assert len(scored) == 497 and set(scored["model_version"]) == {version}
    assert list(rejects["row"]) == [4, 8, 10] and list(rejects["customerID"]) == list(frame["customerID"][[3, 7, 9]])
    assert "field 'tenure': input should be a valid number, got 'abc'" in rejects["reject_reason"][0]
    assert "field 'gender': is missing" in rejects["reject_reason"][1]
    assert "finite number" in rejects["reject_reason"][2]

    # the same predictions as MLflow's own pyfunc of that version, row for row
    mv = mlflow.MlflowClient().get_model_version("churn-classifier", version)
    good = frame.drop(index=[3, 7, 9])
    X = coerce_to_schema(good, load_feature_schema(mlflow.MlflowClient(), mv.run_id))
    expected = mlflow.pyfunc.load_model(f"models:/churn-classifier/{version}").predict(X)
    assert list(scored["prediction"]) == list(expected) and list(scored["customerID"]) == list(good["customerID"])


def test_score_refuses_what_it_cannot_do_with_a_clear_exit_code(project, cli):
    deploy(cli)
    pd.read_csv("data/churn.csv").head(5).drop(columns=["tenure"]).to_csv("no-tenure.csv", index=False)
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv") == 2 and "'tenure' missing" in cli.err
    assert cli("score", "--input", "nope.csv", "--output", "o.csv") == 2 and "does not exist" in cli.err
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv", "--version", "9") == 1
    assert "has no version 9" in cli.err
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv", "--alias", "staging") == 2
    assert "no alias @staging" in cli.err
