"""The feature store's data, built from the churn frame: two feature views' rows and the entity frame.

Pure (pandas and pyarrow, no Feast, no subprocess). Each view's file holds customerID, event_timestamp (when the
values were observed: the snapshot), created (when the row was written; Feast breaks ties with it) and the view's
features; the entity frame holds customerID, event_timestamp (when the label was observed, after the snapshot) and
Churn. Names and types are FEAST.md's and those the CSV path gives: SeniorCitizen and tenure int64, MonthlyCharges
float64, everything else text (TotalCharges keeps the CSV's blank for brand-new customers).

`history` adds an older snapshot per customer with other values (a month earlier: one month less tenure, other
charges, another partner flag), so a point-in-time read can be told apart from a latest-value read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError

ENTITY = "customerID"
EVENT_TIMESTAMP = "event_timestamp"
CREATED = "created"
LABEL = "Churn"
PROFILE = (
    "gender",
    "SeniorCitizen",
    "Partner",
    "Dependents",
    "PhoneService",
    "MultipleLines",
    "InternetService",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "TechSupport",
    "StreamingTV",
    "StreamingMovies",
)
ACCOUNT = ("tenure", "Contract", "PaperlessBilling", "PaymentMethod", "MonthlyCharges", "TotalCharges")
VIEWS: dict[str, tuple[str, ...]] = {"customer_profile": PROFILE, "customer_account": ACCOUNT}
INTEGER = frozenset({"SeniorCitizen", "tenure"})
FLOAT = frozenset({"MonthlyCharges"})
ENTITIES_FILE = "entities.parquet"
# How much earlier than the snapshot the history's older values were observed.
HISTORY_GAP = timedelta(days=28)


@dataclass(frozen=True)
class FeatureData:
    """What write_feature_data wrote: each file, its rows, and the event time range of the feature rows."""

    files: dict[str, Path]  # view name (and "entities") -> file
    rows: dict[str, int]
    first: datetime
    last: datetime
    observed: datetime


def _utc(moment: datetime) -> pd.Timestamp:
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no time zone")
    return pd.Timestamp(moment).tz_convert("UTC")


def _checked(churn: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in (ENTITY, *columns) if c not in churn.columns]
    if missing:
        raise DataError(f"the churn data lacks {', '.join(missing)}")
    ids = churn[ENTITY]
    if ids.isna().any() or (ids.astype(str).str.strip() == "").any():
        raise DataError(f"the churn data has a blank {ENTITY}")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise DataError(f"the churn data has {len(duplicated)} duplicate {ENTITY}s, e.g. {duplicated.iloc[0]!r}")
    return churn


def _typed(column: pd.Series, name: str) -> pd.Series:
    """A feature column as the CSV path reads it: int64, float64 or text."""
    try:
        if name in INTEGER:
            return pd.Series(pd.to_numeric(column).to_numpy(dtype="int64"), name=name)
        if name in FLOAT:
            return pd.Series(pd.to_numeric(column).to_numpy(dtype="float64"), name=name)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a number everywhere ({exc})") from None
    return pd.Series([None if pd.isna(v) else str(v) for v in column], name=name, dtype=object)


def feature_frames(churn: pd.DataFrame, snapshot: datetime) -> dict[str, pd.DataFrame]:
    """{view: frame}: every customer's values of the view as observed at `snapshot` (aware; stored as UTC)."""
    stamp = _utc(snapshot)
    frames = {}
    for view, features in VIEWS.items():
        source = _checked(churn, features).reset_index(drop=True)
        columns = {ENTITY: _typed(source[ENTITY], ENTITY)}
        columns[EVENT_TIMESTAMP] = pd.Series([stamp] * len(source), dtype="datetime64[us, UTC]")
        columns[CREATED] = columns[EVENT_TIMESTAMP].copy()
        columns |= {name: _typed(source[name], name) for name in features}
        frames[view] = pd.DataFrame(columns)
    return frames


def entity_frame(churn: pd.DataFrame, observed: datetime, label: str = LABEL) -> pd.DataFrame:
    """customerID, event_timestamp (`observed`: when the label was known) and the label, one row per customer."""
    source = _checked(churn, (label,)).reset_index(drop=True)
    return pd.DataFrame(
        {
            ENTITY: _typed(source[ENTITY], ENTITY),
            EVENT_TIMESTAMP: pd.Series([_utc(observed)] * len(source), dtype="datetime64[us, UTC]"),
            label: _typed(source[label], label),
        }
    )


def earlier_values(churn: pd.DataFrame) -> pd.DataFrame:
    """The same customers a month earlier, with values that differ from today's.

    One month less tenure (never below 0), charges 5% lower (within the data's range), the TotalCharges that
    makes (blank when the tenure was 0), and the Partner flag the other way round.
    """
    _checked(churn, ("tenure", "MonthlyCharges", "TotalCharges", "Partner"))
    older = churn.copy()
    tenure = np.maximum(pd.to_numeric(churn["tenure"]).to_numpy(dtype="int64") - 1, 0)
    monthly = np.clip(pd.to_numeric(churn["MonthlyCharges"]).to_numpy(dtype="float64") * 0.95, 18.25, 118.75).round(2)
    older["tenure"] = tenure
    older["MonthlyCharges"] = monthly
    older["TotalCharges"] = np.where(tenure == 0, " ", (monthly * tenure).round(2).astype(str))
    older["Partner"] = np.where(churn["Partner"].astype(str) == "Yes", "No", "Yes")
    return older


def _schema(features: tuple[str, ...]) -> pa.Schema:
    types = {
        name: pa.int64() if name in INTEGER else pa.float64() if name in FLOAT else pa.string() for name in features
    }
    stamp = pa.timestamp("us", tz="UTC")
    return pa.schema([(ENTITY, pa.string()), (EVENT_TIMESTAMP, stamp), (CREATED, stamp), *types.items()])


def _write(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    """Parquet with plain types (string, int64, float64, timestamp[us, UTC]) whatever pandas' own dtypes are."""
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    temporary.replace(path)  # a reader (Feast, mid-materialization) sees the old file or the new one


def write_feature_data(
    directory: Path,
    churn: pd.DataFrame,
    snapshot: datetime,
    observed: datetime | None = None,
    *,
    history: bool = False,
    label: str = LABEL,
) -> FeatureData:
    """Write each view's file and the entity frame (entities.parquet) into `directory`.

    `observed` (default: the snapshot): the entity frame's event timestamp, when labels were known; it must not
    precede the snapshot, or no row would see a feature. `history`: each view's file also holds the older values
    of earlier_values, observed HISTORY_GAP before the snapshot.
    """
    observed = observed or snapshot
    if _utc(observed) < _utc(snapshot):
        raise DataError(
            f"labels observed at {observed.isoformat()} precede the feature snapshot {snapshot.isoformat()}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    current = feature_frames(churn, snapshot)
    older = feature_frames(earlier_values(churn), snapshot - HISTORY_GAP) if history else {}
    files, rows = {}, {}
    for view, frame in current.items():
        if view in older:
            frame = pd.concat([older[view], frame], ignore_index=True)
        files[view] = directory / f"{view}.parquet"
        rows[view] = len(frame)
        _write(frame, _schema(VIEWS[view]), files[view])
    entities = entity_frame(churn, observed, label)
    stamp = pa.timestamp("us", tz="UTC")
    schema = pa.schema([(ENTITY, pa.string()), (EVENT_TIMESTAMP, stamp), (label, pa.string())])
    files["entities"] = directory / ENTITIES_FILE
    rows["entities"] = len(entities)
    _write(entities, schema, files["entities"])
    first = (snapshot - HISTORY_GAP) if history else snapshot
    return FeatureData(
        files, rows, _utc(first).to_pydatetime(), _utc(snapshot).to_pydatetime(), _utc(observed).to_pydatetime()
    )


def default_times(now: datetime | None = None) -> tuple[datetime, datetime]:
    """(snapshot, observed) for a build now: features observed a day ago, labels now (whole seconds, UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return now - timedelta(days=1), now
