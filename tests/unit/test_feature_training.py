"""Training from a feature service, the pure part: the historical frame becomes the Dataset the CSV path gives."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from pipeline.core.churn_data import generate_churn
from pipeline.core.config import DataParams, FeatureStoreParams
from pipeline.core.data import prepare
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.feature_training import (
    entities_fingerprint,
    entity_frame,
    feature_dataset,
    feature_names,
    service_record,
)
from pipeline.core.train import train

from ..families import FAMILY_NAMES, quick_params


@dataclass(frozen=True)
class View:
    name: str
    features: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Service:
    service: str
    entity_field: str
    views: tuple[View, ...]
    definitions_hash: str


PROFILE = [
    *("gender", "SeniorCitizen", "Partner", "Dependents", "PhoneService", "MultipleLines", "InternetService"),
    *("OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV", "StreamingMovies"),
]
ACCOUNT = ["tenure", "Contract", "PaperlessBilling", "PaymentMethod", "MonthlyCharges", "TotalCharges"]
DTYPES = {"SeniorCitizen": "Int64", "tenure": "Int64", "MonthlyCharges": "Float64"}
SERVICE = Service(
    "churn_model",
    "customerID",
    tuple(
        View(name, tuple((n, DTYPES.get(n, "String")) for n in names))
        for name, names in (("customer_profile", PROFILE), ("customer_account", ACCOUNT))
    ),
    "ab" * 32,
)


@pytest.fixture(scope="module")
def churn():
    """The generated rows typed as Feast returns them (int64, float64, text), and as the CSV path reads them."""
    typed = generate_churn(1500, 42)
    typed["TotalCharges"] = typed["TotalCharges"].mask(typed["tenure"] == 0, " ")  # blanks, as in Telco
    typed["event_timestamp"] = pd.Timestamp("2026-01-01", tz="UTC")
    return typed, prepare(typed.drop(columns="event_timestamp").astype(str), DataParams())


def test_the_service_frame_gives_the_csv_paths_dataset_and_model(churn):
    typed, csv = churn
    data = feature_dataset(typed, SERVICE, DataParams(), "fp")
    assert [f.name for f in data.schema] == feature_names(SERVICE)  # the service's order
    assert sorted(data.schema, key=lambda f: f.name) == sorted(csv.schema, key=lambda f: f.name)  # same kinds
    assert data.features.equals(csv.features[list(data.features.columns)])
    assert data.target.equals(csv.target) and data.rows == csv.rows
    for family in FAMILY_NAMES:  # same rows, same seed: the same split and the same answers
        on_csv, on_service = (train(d, quick_params(family), 0.2, 42) for d in (csv, data))
        assert on_csv.split.X_test.index.equals(on_service.split.X_test.index)
        X = data.features
        assert np.array_equal(on_csv.model.predict_proba(X[csv.features.columns]), on_service.model.predict_proba(X)), (
            family
        )


def test_missing_values_stay_missing_and_numbers_keep_their_value(churn):
    typed, _ = churn
    sample = typed.head(4).copy()
    sample["Churn"] = ["Yes", "No", "No", "Yes"]
    sample["MonthlyCharges"] = [0.1 + 0.2, np.nan, 1e-7, 70.0]
    sample["gender"] = pd.array(["Male", None, "Female", "Male"], dtype="string")
    data = feature_dataset(sample, SERVICE, DataParams(), "fp")
    assert data.features["MonthlyCharges"].iloc[0] == 0.1 + 0.2 and data.features["MonthlyCharges"].iloc[2] == 1e-7
    assert data.features["MonthlyCharges"].isna().tolist() == [False, True, False, False]
    assert data.features["gender"].isna().tolist() == [False, True, False, False]


def test_a_missing_feature_column_is_named(churn):
    typed, _ = churn
    with pytest.raises(DataError, match=r"returned no column\(s\) \['tenure'\]"):
        feature_dataset(typed.drop(columns="tenure"), SERVICE, DataParams(), "fp")


def test_entity_frame_is_checked_and_fingerprinted_by_content(churn):
    typed, _ = churn
    raw = typed[["customerID", "event_timestamp", "Churn"]].head(50)
    entities = entity_frame(raw, "customerID", "Churn", "e.parquet")
    assert list(entities.columns) == ["customerID", "event_timestamp", "Churn"]
    print_ = entities_fingerprint(entities, "customerID", "Churn")
    naive = entities.assign(event_timestamp=entities["event_timestamp"].dt.tz_convert("Europe/Paris"))
    assert entities_fingerprint(naive, "customerID", "Churn") == print_  # the same instants
    later = entities.assign(event_timestamp=entities["event_timestamp"] + pd.Timedelta(microseconds=1))
    assert entities_fingerprint(later, "customerID", "Churn") != print_
    assert entities_fingerprint(entities.iloc[::-1], "customerID", "Churn") != print_  # row order is the split's
    with pytest.raises(DataError, match=r"lacks column\(s\) \['Churn'\]"):
        entity_frame(raw.drop(columns="Churn"), "customerID", "Churn", "e.parquet")
    with pytest.raises(DataError, match="without an event_timestamp"):
        entity_frame(raw.assign(event_timestamp=pd.NaT), "customerID", "Churn", "e.parquet")


def test_the_record_carries_each_views_features_and_max_age():
    record = service_record(SERVICE, FeatureStoreParams(service="churn_model", stale="warn"))
    assert record["service"] == "churn_model" and record["stale"] == "warn"
    assert record["definitions_hash"] == SERVICE.definitions_hash
    assert [v["name"] for v in record["views"]] == ["customer_profile", "customer_account"]
    assert record["views"][1]["features"][0] == ["tenure", "Int64"]
    assert record["views"][1]["max_age_s"] == FeatureStoreParams().max_age_s["customer_account"]
    with pytest.raises(ConfigError, match=r"no max age for view\(s\) \['customer_account'\]"):
        service_record(SERVICE, FeatureStoreParams(service="churn_model", max_age_s={"customer_profile": 60}))
