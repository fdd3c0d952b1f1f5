"""The churn feature definitions: one entity, two feature views over Parquet files, one feature service.

Feast imports this file on `apply` (featurestore/job.py apply). Names are fixed by the project (FEAST.md):
entity `customer` joined on `customerID`; views `customer_profile` and `customer_account`; service `churn_model`.
Each source file holds customerID, event_timestamp (when the values were observed), created (when the row was
written; it breaks ties between rows with the same event_timestamp) and the view's features.

FEATURE_DATA_URI (optional) moves the sources: a folder or s3://bucket/prefix (the team configuration). By default
they are ../../data/features/*.parquet, relative to this folder (Feast resolves a relative path against the repo).
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

DATA = os.environ.get("FEATURE_DATA_URI", "../../data/features").rstrip("/")
S3_ENDPOINT = os.environ.get("FEATURE_S3_ENDPOINT") or None
# Long enough that no snapshot in the data is too old for a point-in-time read; serving's own max ages are
# params.yaml's feature_store.max_age_s (Feast's ttl does not filter online reads).
TTL = timedelta(days=3650)

customer = Entity(
    name="customer",
    join_keys=["customerID"],
    value_type=ValueType.STRING,
    description="A customer, by its customerID",
)


def _source(view: str) -> FileSource:
    return FileSource(
        name=f"{view}_source",
        path=f"{DATA}/{view}.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        s3_endpoint_override=S3_ENDPOINT,
    )


customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=TTL,
    schema=[
        Field(name="gender", dtype=String),
        Field(name="SeniorCitizen", dtype=Int64),
        Field(name="Partner", dtype=String),
        Field(name="Dependents", dtype=String),
        Field(name="PhoneService", dtype=String),
        Field(name="MultipleLines", dtype=String),
        Field(name="InternetService", dtype=String),
        Field(name="OnlineSecurity", dtype=String),
        Field(name="OnlineBackup", dtype=String),
        Field(name="DeviceProtection", dtype=String),
        Field(name="TechSupport", dtype=String),
        Field(name="StreamingTV", dtype=String),
        Field(name="StreamingMovies", dtype=String),
    ],
    source=_source("customer_profile"),
    online=True,
    description="Who the customer is and which services they take",
)

customer_account = FeatureView(
    name="customer_account",
    entities=[customer],
    ttl=TTL,
    schema=[
        Field(name="tenure", dtype=Int64),
        Field(name="Contract", dtype=String),
        Field(name="PaperlessBilling", dtype=String),
        Field(name="PaymentMethod", dtype=String),
        Field(name="MonthlyCharges", dtype=Float64),
        # Text, as in the CSV: brand-new customers have a blank TotalCharges.
        Field(name="TotalCharges", dtype=String),
    ],
    source=_source("customer_account"),
    online=True,
    description="The customer's contract and billing",
)

churn_model = FeatureService(
    name="churn_model",
    features=[customer_profile, customer_account],
    description="Every feature the churn classifier reads",
)
