"""Training from a Feast feature service: the entity frame in, a Dataset out, and what the version records.

Pure: the adapter's answers (pipeline/store/feature_store.py: describe, historical) come in as values. The
features come back typed (SeniorCitizen int64, MonthlyCharges float64, strings); they are turned into the
text the CSV path reads and go through the same `prepare`, so the same rows give the same Dataset, column
kinds included, whichever path they took.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from pipeline.core.config import DataParams, FeatureStoreParams
from pipeline.core.data import Dataset, prepare
from pipeline.core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from collections.abc import Iterable

EVENT_TIMESTAMP = "event_timestamp"
# The file inside the logged model directory (FEAST.md); the same record is in MLmodel's metadata.
SERVICE_FILE = "feature_service.json"
METADATA_KEY = "feature_service"
# Run tags (copied onto the registered version): what the model was trained from.
TAG_SERVICE = "feature_store.service"
TAG_VIEWS = "feature_store.views"  # the service's feature views, comma-separated, in its order
TAG_DEFINITIONS = "feature_store.definitions_hash"  # sha256 of the definition files' bytes
TAG_ENTITIES = "feature_store.entities_fingerprint"  # sha256 of the entity frame's canonical CSV
VIEW_FEATURES_PREFIX = "feature_store.view."  # one run param per view: its features, comma-separated
VERSION_TAGS = (TAG_SERVICE, TAG_VIEWS, TAG_DEFINITIONS, TAG_ENTITIES)


class ViewLike(Protocol):
    """A feature view as the adapter describes it (pipeline.store.feature_store.FeatureView is one)."""

    @property
    def name(self) -> str:
        """The view's name."""

    @property
    def features(self) -> tuple[tuple[str, str], ...]:
        """(feature, Feast dtype) in the view's order."""


class ServiceLike(Protocol):
    """A feature service as the adapter describes it (pipeline.store.feature_store.ServiceDescription is one)."""

    @property
    def service(self) -> str:
        """The service's name."""

    @property
    def entity_field(self) -> str:
        """The join key (customerID)."""

    @property
    def views(self) -> Sequence[ViewLike]:
        """Its feature views, in order."""

    @property
    def definitions_hash(self) -> str:
        """sha256 of the definition files."""


@dataclass(frozen=True)
class FeatureSource:
    """Where a feature-store run's data came from: the service described, and the entity frame's fingerprint."""

    description: ServiceLike
    entities_fingerprint: str
    record: dict[str, Any]  # feature_service.json

    @property
    def tags(self) -> dict[str, str]:
        """The run tags (and, at registration, the version's)."""
        return {
            TAG_SERVICE: self.description.service,
            TAG_VIEWS: ",".join(v.name for v in self.description.views),
            TAG_DEFINITIONS: self.description.definitions_hash,
            TAG_ENTITIES: self.entities_fingerprint,
        }

    @property
    def params(self) -> dict[str, str]:
        """Run params: each view's features with their Feast types, in order (`name:Type,...`)."""
        return {
            f"{VIEW_FEATURES_PREFIX}{v.name}": ",".join(f"{n}:{t}" for n, t in v.features)
            for v in self.description.views
        }


def recorded_features(tags: Mapping[str, str], params: Mapping[str, str]) -> dict[str, Any] | None:
    """What a run (or its version's run) was trained from, as the policy diff compares it; None: the CSV path.

    {"service", "definitions_hash", "views": {view: [[feature, type], ...]}}, read back from the run's
    tags and params (FeatureSource.tags and .params).
    """
    service = tags.get(TAG_SERVICE)
    if not service:
        return None
    views: dict[str, list[list[str]]] = {}
    for view in filter(None, tags.get(TAG_VIEWS, "").split(",")):
        listed = params.get(f"{VIEW_FEATURES_PREFIX}{view}", "")
        views[view] = [list(item.partition(":")[::2]) for item in filter(None, listed.split(","))]
    return {"service": service, "definitions_hash": tags.get(TAG_DEFINITIONS, ""), "views": views}


def feature_names(description: ServiceLike) -> list[str]:
    """Every feature of the service, in its views' order."""
    return [name for view in description.views for name, _ in view.features]


def entity_frame(frame: pd.DataFrame, entity_field: str, target: str, source: str) -> pd.DataFrame:
    """The entity frame's three columns (id, event_timestamp as UTC, label), checked; DataError names a problem."""
    missing = [c for c in (entity_field, EVENT_TIMESTAMP, target) if c not in frame.columns]
    if missing:
        raise DataError(f"entity frame {source} lacks column(s) {missing}; it has {list(map(str, frame.columns))}")
    if frame.empty:
        raise DataError(f"entity frame {source} has no rows")
    ids = frame[entity_field]
    if ids.isna().any() or (ids.astype(str).str.strip() == "").any():
        raise DataError(f"entity frame {source}: {int(ids.isna().sum())} row(s) without a {entity_field}")
    try:
        stamps = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True)
    except (ValueError, TypeError) as exc:
        raise DataError(f"entity frame {source}: {EVENT_TIMESTAMP} is not a timestamp: {exc}") from None
    if stamps.isna().any():
        raise DataError(f"entity frame {source}: {int(stamps.isna().sum())} row(s) without an {EVENT_TIMESTAMP}")
    return pd.DataFrame(
        {entity_field: ids.astype(str).to_numpy(), EVENT_TIMESTAMP: stamps.to_numpy(), target: frame[target].to_numpy()}
    )


def entities_fingerprint(entities: pd.DataFrame, entity_field: str, target: str) -> str:
    """sha256 of the entity frame's canonical CSV: id, event_timestamp (UTC, microseconds, Z), label; row order kept."""
    stamps = pd.to_datetime(entities[EVENT_TIMESTAMP], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    labels = entities[target].astype(object).where(entities[target].notna(), "")
    canonical = pd.DataFrame(
        {entity_field: entities[entity_field].astype(str), EVENT_TIMESTAMP: stamps, target: labels.astype(str)}
    )
    return hashlib.sha256(canonical.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def as_text(values: pd.Series) -> pd.Series:
    """A typed column as the CSV path reads it: text, missing values missing (floats keep their shortest repr)."""
    present = values.notna()
    return pd.Series(
        [str(v) if keep else None for v, keep in zip(values.tolist(), present.tolist(), strict=True)],
        index=values.index,
        dtype=object,
    )


def feature_dataset(frame: pd.DataFrame, description: ServiceLike, data: DataParams, fingerprint: str) -> Dataset:
    """The historical frame (entity columns + the service's features) as the Dataset training fits on.

    Columns in the service's order, rows in the entity frame's: the split is the CSV path's (same seed).
    `fingerprint` is the data set's (sha256 of the retrieved rows as canonical CSV): see training_fingerprint.
    """
    names = feature_names(description)
    lacking = [n for n in names if n not in frame.columns]
    if lacking:
        raise DataError(f"the feature service {description.service!r} returned no column(s) {lacking}")
    key, target = description.entity_field, data.target
    text = pd.DataFrame(
        {key: frame[key].astype(str).to_numpy(), **{n: as_text(frame[n]).to_numpy() for n in names}},
    )
    text[target] = as_text(frame[target]).to_numpy()
    return prepare(text, data.model_copy(update={"id_column": key}), fingerprint=fingerprint)


def training_fingerprint(frame: pd.DataFrame, columns: Iterable[str]) -> str:
    """sha256 of the retrieved training rows (the given columns, as text, canonical CSV): data.fingerprint."""
    text = pd.DataFrame({c: as_text(frame[c]).fillna("").to_numpy() for c in columns})
    return hashlib.sha256(text.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def service_record(description: ServiceLike, store: FeatureStoreParams) -> dict[str, Any]:
    """feature_service.json (FEAST.md): the service, its views with features, dtypes and max ages, and `stale`.

    Every view must have a max age in params (feature_store.max_age_s): serving refuses or warns past it.
    """
    unaged = [v.name for v in description.views if v.name not in store.max_age_s]
    if unaged:
        raise ConfigError(
            f"feature_store.max_age_s: no max age for view(s) {unaged} of feature service {description.service!r} "
            f"(it has {sorted(store.max_age_s)})"
        )
    return {
        "service": description.service,
        "entity_field": description.entity_field,
        "views": [
            {"name": v.name, "features": [[n, t] for n, t in v.features], "max_age_s": store.max_age_s[v.name]}
            for v in description.views
        ],
        "definitions_hash": description.definitions_hash,
        "stale": store.stale,
    }


def record_json(record: Mapping[str, Any]) -> str:
    """feature_service.json's bytes: sorted keys, indented, one trailing newline."""
    return json.dumps(record, indent=2, sort_keys=True) + "\n"
