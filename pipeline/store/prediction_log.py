"""The prediction log (api/log_layout.py): reading prediction and label segments, writing a label segment.

The root is PREDICTION_LOG_URI, a local folder or s3://BUCKET/PREFIX (default:
predictions-log/ in the working directory). Only names ending .parquet that
do not start with a dot are read: a segment being written aside is neither.
A segment that is not readable Parquet (a torn write, a stray file) is
skipped, never moved, and named in `unreadable`: one bad object must not stop
quality, training-set or the gate.
A labels file given to `outcomes` becomes one label segment named by the
SHA-256 of its labels (canonical_digest), so the same labels fed twice are
one object and the second feed writes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from api.log_layout import LABEL_SCHEMA, LABELS, PREDICTION_SCHEMA, PREDICTIONS, filesystem, label_digest, label_segment
from pipeline.core.errors import ConfigError, DataError

ID_COLUMNS = ("prediction_id", "entity_id")


def _component(name: str) -> str:
    """A model name as one folder of the log, as the API names it (odd characters replaced by _)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _is_segment(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".parquet") and not name.startswith(".")


def _typed(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """`table` with exactly `schema`'s columns (a column it lacks: all null); DataError naming a mistyped one."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(len(table), field.type))
            continue
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{where}: column {field.name} is not {field.type}: {exc}") from None
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class PredictionLog:
    """One log root, opened on its filesystem."""

    fs: pafs.FileSystem
    base: str
    unreadable: list[str] = dataclasses.field(default_factory=list)  # segments skipped so far, and why

    @classmethod
    def open(cls, uri: str) -> PredictionLog:
        """The log at `uri`; ConfigError (exit 2) when it is neither a local folder nor s3://."""
        try:
            fs, base = filesystem(uri)
        except ValueError as exc:
            raise ConfigError(f"PREDICTION_LOG_URI: {exc}") from None
        return cls(fs, base)

    def _segments(self, folder: str) -> list[str]:
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        found = [i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]
        return sorted(p for p in found if _is_segment(p))

    def _read(self, paths: list[str], schema: pa.Schema) -> pd.DataFrame:
        tables = []
        for path in paths:
            try:
                table = pq.read_table(path, filesystem=self.fs)
            except pa.ArrowInvalid as exc:  # skipped and named: the rest of the log still counts
                self.unreadable.append(f"{path}: {exc}")
                continue
            tables.append(_typed(table, schema, f"segment {path}"))
        joined = pa.concat_tables(tables) if tables else schema.empty_table()
        return joined.to_pandas()

    def prediction_segments(self, model: str, since: datetime | None = None) -> list[str]:
        """The model's prediction segments, oldest day first; with `since`, the days before it are skipped."""
        folder = f"{self.base}/{PREDICTIONS}/{_component(model)}"
        paths = self._segments(folder)
        if since is None:
            return paths
        first = since.astimezone(UTC).strftime("%Y-%m-%d")
        return [p for p in paths if p.removeprefix(folder + "/").split("/", 1)[0] >= first]

    def predictions(self, model: str, since: datetime | None = None) -> pd.DataFrame:
        """Every logged answer of `model` (PREDICTION_SCHEMA's columns), made at or after `since` when given."""
        frame = self._read(self.prediction_segments(model, since), PREDICTION_SCHEMA)
        if since is not None:
            frame = frame[frame["time"] >= pd.Timestamp(since)].reset_index(drop=True)
        return frame

    def labels(self) -> pd.DataFrame:
        """Every label segment's rows (LABEL_SCHEMA's columns): file feeds and POST /outcomes alike."""
        return self._read(self._segments(f"{self.base}/{LABELS}"), LABEL_SCHEMA)

    def write_labels(self, table: pa.Table) -> tuple[str, bool]:
        """Store `table` (LABEL_SCHEMA) as the segment named by its digest: (its path, False when already there)."""
        path = label_segment(self.base, canonical_digest(table))
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            return path, False
        if isinstance(self.fs, pafs.LocalFileSystem):  # aside, then renamed: whole or absent
            self.fs.create_dir(f"{self.base}/{LABELS}", recursive=True)
            aside = f"{self.base}/{LABELS}/.{path.rsplit('/', 1)[-1]}.tmp"
            pq.write_table(table, aside, filesystem=self.fs)
            self.fs.move(aside, path)
        else:  # one PUT
            pq.write_table(table, path, filesystem=self.fs)
        return path, True


def canonical_digest(table: pa.Table) -> str:
    """SHA-256 of the labels themselves (api/log_layout.py's label_digest): rows sorted, without when or whence.

    The same labels fed again (in another order, from a file of another name, or through POST /outcomes)
    have the same digest, so they are one segment.
    """
    columns = table.select(["prediction_id", "entity_id", "observed_at", "outcome"]).to_pylist()
    return label_digest((r["prediction_id"], r["entity_id"], r["observed_at"], r["outcome"]) for r in columns)


def read_labels_file(path: Path) -> pd.DataFrame:
    """A labels file as given: CSV (every column as text) or Parquet (.parquet, .pq); DataError when unreadable."""
    if not path.is_file():
        raise DataError(f"--labels {path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise DataError(f"--labels {path}: not a readable CSV or Parquet file: {exc}") from None


def _text_column(frame: pd.DataFrame, name: str, where: str) -> pd.Series:
    """A column as nullable text: text, integers and booleans are accepted; anything else names the column."""
    column = frame[name]
    if column.dtype == object or pd.api.types.is_string_dtype(column):
        bad = column.dropna().map(lambda v: not isinstance(v, str | int | bool))
        if bad.any():
            raise DataError(f"{where}: column {name} must hold text (row {int(bad.idxmax())} does not)")
        return column.astype("string")
    if pd.api.types.is_integer_dtype(column) or pd.api.types.is_bool_dtype(column):
        return column.astype("string")
    raise DataError(f"{where}: column {name} must hold text or integers, not {column.dtype}")


def normalise_labels(frame: pd.DataFrame, source: str, received_at: datetime, where: str) -> pa.Table:
    """A labels frame as LABEL_SCHEMA rows; DataError naming a missing or mistyped column.

    Needs `outcome`, and `prediction_id`, or `entity_id` and `observed_at` (both ways may be mixed, row by
    row). observed_at: timestamps or ISO 8601 text; without a zone, UTC.
    """
    columns = set(frame.columns)
    if "outcome" not in columns:
        raise DataError(f"{where}: no outcome column (it has {sorted(map(str, columns))})")
    if "prediction_id" not in columns and not {"entity_id", "observed_at"} <= columns:
        missing = "prediction_id, or entity_id and observed_at"
        raise DataError(f"{where}: no {missing} column to join on (it has {sorted(map(str, columns))})")
    rows = len(frame)
    out: dict[str, pa.Array] = {}
    for name in ("prediction_id", "entity_id", "outcome"):
        text = _text_column(frame, name, where) if name in columns else pd.Series(pd.NA, index=frame.index)
        out[name] = pa.array(text.astype(object).where(text.notna(), None).tolist(), pa.string())
    observed: pd.Series = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    if "observed_at" in columns:
        given = frame["observed_at"]
        if not (pd.api.types.is_datetime64_any_dtype(given) or given.dtype == object or
                pd.api.types.is_string_dtype(given)):  # fmt: skip
            raise DataError(f"{where}: column observed_at must hold times, not {given.dtype}")
        try:
            observed = pd.to_datetime(given, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where}: column observed_at must hold ISO 8601 times: {exc}") from None
    out["observed_at"] = pa.array(observed.dt.tz_convert(UTC).astype("datetime64[us, UTC]"), LABEL_SCHEMA.field(
        "observed_at").type)  # fmt: skip
    out["received_at"] = pa.array([received_at] * rows, LABEL_SCHEMA.field("received_at").type)
    out["source"] = pa.array([source] * rows, pa.string())
    return pa.Table.from_pydict({f.name: out[f.name] for f in LABEL_SCHEMA}, schema=LABEL_SCHEMA)
