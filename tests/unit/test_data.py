import numpy as np
import pandas as pd
import pytest

from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams
from pipeline.core.data import load_dataset, prepare
from pipeline.core.errors import DataError

TELCO_COLUMNS = [
    "customerID", "gender", "SeniorCitizen", "Partner", "Dependents", "tenure", "PhoneService", "MultipleLines",
    "InternetService", "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV",
    "StreamingMovies", "Contract", "PaperlessBilling", "PaymentMethod", "MonthlyCharges", "TotalCharges", "Churn",
]  # fmt: skip


def test_generated_data_has_the_telco_schema_and_is_deterministic():
    first, again, other = generate_churn(500, 7), generate_churn(500, 7), generate_churn(500, 8)
    assert list(first.columns) == TELCO_COLUMNS
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)


def test_generated_churn_rate_and_drivers_look_like_telco():
    frame = generate_churn(7043, 42)
    churn = frame["Churn"] == "Yes"
    assert 0.2 < churn.mean() < 0.33
    by_contract = churn.groupby(frame["Contract"]).mean()
    assert by_contract["Month-to-month"] > 2 * by_contract["Two year"]
    assert churn[frame["tenure"] < 12].mean() > churn[frame["tenure"] > 48].mean()
    assert (frame.loc[frame["tenure"] == 0, "TotalCharges"] == " ").all()


def _write(tmp_path, frame: pd.DataFrame) -> DataParams:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return DataParams(path=str(path), target="y", positive_label="yes", id_column="id")


def test_types_are_inferred_and_blank_numbers_become_missing(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "amount": ["1.5", " ", "3", "4"], "plan": ["x", "y", "x", ""],
                          "y": ["yes", "no", "yes", "no"]})  # fmt: skip
    data = load_dataset(_write(tmp_path, frame))
    assert {f.name: f.kind for f in data.schema} == {"amount": "numeric", "plan": "categorical"}
    assert np.isnan(data.features["amount"].iloc[1])
    assert data.features["amount"].dtype == "float64"
    assert "id" not in data.features
    assert len(data.fingerprint) == 64


def test_missing_id_column_is_a_note_not_an_error(tmp_path):
    frame = pd.DataFrame({"x": [1, 2, 3, 4], "y": ["yes", "no", "yes", "no"]})
    data = load_dataset(_write(tmp_path, frame))
    assert any("id column 'id'" in note for note in data.notes)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"x": [1, 2], "label": ["a", "b"]}), r"target column 'y' not found; columns are: x, label"),
        (pd.DataFrame({"x": [1, 2, 3], "y": ["yes", "yes", "yes"]}), "exactly two classes, found 1"),
        (pd.DataFrame({"x": [1, 2, 3], "y": ["yes", "no", "maybe"]}), "exactly two classes, found 3"),
        (pd.DataFrame({"x": [1, 2], "y": ["A", "B"]}), "positive_label 'yes' is not a class"),
        (pd.DataFrame({"x": [1, 2, 3], "y": ["yes", None, "no"]}), "1 empty value"),
        (pd.DataFrame({"y": ["yes", "no"]}), "need a target and features"),
        (pd.DataFrame({"id": [1, 2], "y": ["yes", "no"]}), "no feature columns"),
    ],
)
def test_bad_data_is_named(tmp_path, frame, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_write(tmp_path, frame))


def test_missing_empty_and_binary_files_are_refused(tmp_path):
    params = DataParams(path=str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(params)
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(DataParams(path=str(tmp_path / "empty.csv")))
    (tmp_path / "blob.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"blob\.csv is binary, not a CSV"):
        load_dataset(DataParams(path=str(tmp_path / "blob.csv")))
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n1,2,3,4\n")
    with pytest.raises(DataError, match="not a readable CSV: Error tokenizing"):
        load_dataset(DataParams(path=str(tmp_path / "ragged.csv")))


def test_numeric_target_with_numeric_positive_label(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})
    data = prepare(frame.astype(str), DataParams(target="y", positive_label="1", id_column=None))
    assert set(data.target) == {"0", "1"}
