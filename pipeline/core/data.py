"""Load a CSV into features and a binary target, inferring column types.

No column name is hard-coded: the target, the positive label and the id column
come from params, every other column is a feature.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from api.release.frames import typed_frame
from pipeline.core.config import DataParams
from pipeline.core.errors import DataError


@dataclass(frozen=True)
class Feature:
    """A training column and its inferred kind."""

    name: str
    kind: str  # "numeric" or "categorical"

    @property
    def numeric(self) -> bool:
        """Whether the column is numeric."""
        return self.kind == "numeric"


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: typed features, the text target, the schema and where the data came from."""

    features: pd.DataFrame
    target: pd.Series  # text labels
    positive_label: str
    schema: tuple[Feature, ...]
    fingerprint: str
    rows: int
    notes: tuple[str, ...] = ()

    @property
    def numeric(self) -> list[str]:
        """The names of the numeric features."""
        return [f.name for f in self.schema if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        """The names of the categorical features."""
        return [f.name for f in self.schema if f.kind == "categorical"]


def load_dataset(params: DataParams) -> Dataset:
    """Read `params.path` and validate it; DataError names any problem."""
    path = Path(params.path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (run `make data` for the default data set)")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"data file {path} is empty")
    if b"\x00" in raw[:8192]:
        raise DataError(f"data file {path} is binary, not a CSV")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"data file {path} is not a readable CSV: {str(exc).strip()}") from None
    return prepare(frame, params, fingerprint=hashlib.sha256(raw).hexdigest())


def prepare(frame: pd.DataFrame, params: DataParams, fingerprint: str = "") -> Dataset:
    """Split a frame of text columns into typed features and a text target."""
    notes: list[str] = []
    if frame.shape[1] < 2 or frame.empty:
        raise DataError(f"data has {frame.shape[1]} column(s) and {len(frame)} row(s); need a target and features")
    if params.target not in frame.columns:
        raise DataError(f"target column {params.target!r} not found; columns are: {', '.join(map(str, frame.columns))}")
    target = frame[params.target].astype("string").str.strip()
    if target.isna().any() or (target == "").any():
        raise DataError(
            f"target column {params.target!r} has {int((target.isna() | (target == '')).sum())} empty value(s)"
        )
    classes = sorted(target.unique())
    if len(classes) != 2:
        raise DataError(
            f"target column {params.target!r} must have exactly two classes, found {len(classes)}: {classes[:10]}"
        )
    if params.positive_label not in classes:
        raise DataError(f"positive_label {params.positive_label!r} is not a class of {params.target!r}: {classes}")

    drop = [params.target]
    if params.id_column:
        if params.id_column in frame.columns:
            drop.append(params.id_column)
        else:
            notes.append(f"id column {params.id_column!r} not in data; nothing dropped for it")
    features = frame.drop(columns=drop)
    if features.shape[1] == 0:
        raise DataError("no feature columns left after dropping the target and id column")
    typed, schema = infer_types(features)
    return Dataset(
        features=typed,
        target=target.astype(object),
        positive_label=params.positive_label,
        schema=schema,
        fingerprint=fingerprint,
        rows=len(frame),
        notes=tuple(notes),
    )


def infer_types(features: pd.DataFrame) -> tuple[pd.DataFrame, tuple[Feature, ...]]:
    """A column is numeric when every non-blank value parses as a number.

    Blank strings (as in Telco's TotalCharges) become NaN and are imputed later.
    """
    columns: dict[str, pd.Series] = {}
    schema = []
    for name in features.columns:
        text = features[name].astype("string").str.strip().replace("", pd.NA)
        numbers = pd.to_numeric(text, errors="coerce")
        if text.notna().any() and numbers.notna().sum() == text.notna().sum():
            columns[name] = numbers.astype("float64")
            schema.append(Feature(str(name), "numeric"))
        else:
            columns[name] = text.astype(object).where(text.notna(), np.nan)
            schema.append(Feature(str(name), "categorical"))
    return pd.DataFrame(columns, index=features.index), tuple(schema)


def coerce_to_schema(frame: pd.DataFrame, schema: tuple[Feature, ...]) -> pd.DataFrame:
    """Cast a frame to a known schema (used when scoring stored test sets): api.release.frames' one cast."""
    for feature in schema:
        if feature.name not in frame.columns:
            raise DataError(f"column {feature.name!r} is missing")
    return typed_frame(frame, schema)
