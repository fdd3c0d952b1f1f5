"""Batch scoring on Spark, for inputs that outgrow one machine: `pipeline score --engine spark [--master URL]`.

The driver loads and verifies the version once, through the same release check
as the API (RegistrySource: digest, verdicts, signatures, skops allow-list,
probe child), then fetches the artifact's bytes again and ships them only if
their digest is the verified one. Executors receive plain data in a broadcast
(the skops file's bytes, the features, the positive label, the stored
examples), check the digest, load the estimator through the allow-list
(api.release.safe_model.load_estimator_bytes) and rebuild the LoadedModel,
compiled path and its proof included. No executor reads the registry, and no
model is loaded from a URI (mlflow.pyfunc.spark_udf is never used).

Each partition is scored by the local engine's BatchScorer in `mapInArrow`
(the column validator and the compiled path on the same pyarrow batches;
mapInPandas would add a pandas round trip and nothing else). Output: the
predictions and the rejects as Parquet datasets (folders), each written to a
hidden sibling folder and renamed into place only when the job succeeds.

Row numbers are those of the local engine: 1 is the first data row of the
file. For CSV a first pass counts the rows of each split the file is read in
(in the JVM, no Python), for Parquet Spark's row index says it. A folder of
files is numbered per file, and its rejects name the file (`source_file`).

CSV is read as text with RFC 4180 quoting (a doubled quote escapes one), one
record per line (a quoted line break would make the file unsplittable; use
Parquet for such data), malformed rows failing the job. Spark reads a blank
unquoted cell as null where the local engine keeps "": both are missing.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import secrets
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from api.model.loaded_model import LoadedModel
from api.model.schema import FeatureSpec
from api.release.safe_model import ArtifactBytes, RefusedModel, load_estimator_bytes
from pipeline.core.errors import CheckFailed, ConfigError, DataError
from pipeline.runtime.batch_scoring import (
    ADDED,
    REJECT_REASON,
    ROW,
    BatchScorer,
    ScoreSummary,
    rejects_path_for,
)
from pipeline.runtime.output_files import Protected, check_targets
from pipeline.runtime.tables import CSV, PARQUET, PARQUET_MAGIC, PARQUET_SUFFIXES, header_names, refuse_duplicates

SOURCE_FILE = "source_file"  # in the rejects of a folder of files: which file the row is in
_FILE, _START, _INDEX = "__score_file__", "__score_split__", "__score_row__"  # row-number columns, dropped
PACKAGES = ("api", "gates", "pipeline")  # the project's code, shipped to the executors
BATCH_ROWS = 32_768  # rows per Arrow batch handed to Python (Spark's default is 10,000)
_SCORERS: dict[str, BatchScorer] = {}  # per Python worker: the rebuilt version, by digest
_SHIPPED: set[str] = set()  # code archives already added to this driver's SparkContext


def score_dataset(
    model: LoadedModel,
    client: Any,
    input_path: str,
    output: str,
    fmt: str | None = None,
    master: str | None = None,
    protected: Iterable[Protected] = (),
) -> ScoreSummary:
    """Score `input_path` (a CSV or Parquet file, or a folder of them) on Spark into Parquet datasets."""
    rejects = check_paths(input_path, output, fmt, protected)
    payload = shipment(model, client)
    spark, created = session(master)
    try:
        return _score(spark, model, payload, input_path, output, rejects)
    finally:
        if created:
            spark.stop()


def check_paths(input_path: str, output: str, fmt: str | None, protected: Iterable[Protected] = ()) -> str:
    """The rejects dataset's path, once the paths are known to be usable (local paths: as the local engine checks)."""
    if fmt not in (None, PARQUET) or (fmt is None and output.lower().endswith(".csv")):
        raise ConfigError(f"the spark engine writes Parquet datasets (folders), not {fmt or 'csv'}; use .parquet")
    rejects = str(rejects_path_for(Path(output), PARQUET)) if _is_local(output) else _rejects_uri(output)
    if _is_local(input_path) and not Path(input_path).exists():
        raise DataError(f"input {input_path} does not exist")
    if _is_local(output) and _is_local(rejects):
        guards = [Protected("the input", Path(input_path), tree=Path(input_path).is_dir()), *protected]
        check_targets({"output": Path(output), "rejects file": Path(rejects)}, guards, folders=True)
    return rejects


def _score(
    spark: Any, model: LoadedModel, payload: dict[str, Any], input_path: str, output: str, rejects: str
) -> ScoreSummary:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    _ship_code(spark)
    source = _uri(input_path)
    folder = _is_folder(spark, source)
    fmt = _input_format(spark, input_path, source, folder)
    scorer = BatchScorer(model)  # the driver's: checks columns, names the path that scores
    frame, names = _read(spark, source, fmt)
    scorer.check_columns(names, input_path)
    if folder and SOURCE_FILE in names:
        raise DataError(f"{input_path}: column {SOURCE_FILE!r} would be written twice (the rejects name the file)")
    meta = [F.col("_metadata.file_path").alias(_FILE)]
    offsets: dict[tuple[str, int], int] = {}
    if fmt == CSV:
        meta.append(F.col("_metadata.file_block_start").alias(_START))
        offsets, expected = _split_offsets(frame)
    else:
        meta.append(F.col("_metadata.row_index").alias(_INDEX))
        expected = int(frame.count())  # from the files' footers
    scored_schema = _union_schema(scorer, frame.schema)
    large = spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false").lower() == "true"
    run = partial(_score_partition, spark.sparkContext.broadcast(payload), offsets, names, scored_schema.json(), large)
    result = frame.select(*(_col(n) for n in names), *meta).mapInArrow(run, scored_schema)
    result = result.persist(StorageLevel.DISK_ONLY)
    kept = [_col(n) for n in (*names, *ADDED)]
    refused = [_col(n) for n in (ROW, *names, REJECT_REASON, *([SOURCE_FILE] if folder else []))]
    fs = _FileSystem(spark)
    staged = {target: fs.sibling(target) for target in (output, rejects)}
    try:
        try:
            result.where(F.col(REJECT_REASON).isNull()).select(*kept).write.parquet(staged[output])
            result.where(F.col(REJECT_REASON).isNotNull()).select(*refused).write.parquet(staged[rejects])
        except Exception as exc:
            raise _failure(exc, input_path) from None
        scored = spark.read.parquet(staged[output]).count()
        rejected = spark.read.parquet(staged[rejects]).count()
        if expected != scored + rejected:
            raise CheckFailed(f"{input_path}: {expected} rows read but {scored} scored and {rejected} rejected")
        fs.replace(staged[output], output)
        if rejected:
            fs.replace(staged[rejects], rejects)
        else:
            fs.delete(staged[rejects])
            fs.delete(rejects)  # an earlier run's rejects go, as with the local engine
    finally:
        result.unpersist()
        for temp in staged.values():
            fs.delete(temp)
    seconds = time.perf_counter() - started
    if scored == 0 and rejected:
        raise CheckFailed(f"all {rejected} rows failed validation; reasons in {rejects}")
    note = f"{scorer.columnar.note}; Spark {spark.version}, master {spark.sparkContext.master}"
    return ScoreSummary(
        model.version, scored, rejected, seconds, Path(rejects) if rejected else None, "spark", PARQUET, note
    )


# --- the version, shipped as bytes --------------------------------------------------------------


def shipment(model: LoadedModel, client: Any) -> dict[str, Any]:
    """What executors need to rebuild `model`, as plain data: the verified bytes, features, label, examples.

    The artifact is fetched again and shipped only if its digest is the one the
    release check verified when `model` was loaded.
    """
    from api.release.check import fetch_version_files  # MLflow: the driver's only, executors never import it

    info = model.info
    with tempfile.TemporaryDirectory(prefix="ship-") as tmp:
        files = fetch_version_files(client, str(info["name"]), model.version, str(info["run_id"]), Path(tmp))
    if files.digest != info.get("artifact_digest"):
        raise CheckFailed(
            f"version {model.version} refused: its artifact changed since it was verified "
            f"({files.digest[:19]}… is not {str(info.get('artifact_digest'))[:19]}…); nothing scored"
        )
    return {
        "files": dict(files.artifact.files),
        "model_file": files.artifact.model_name,
        "digest": files.digest,
        "features": [[f.name, f.type, f.required] for f in model.features],
        "positive_label": model.positive_label,
        "max_batch_size": model.max_batch_size,
        "info": {k: info[k] for k in ("name", "version", "alias", "run_id", "artifact_digest") if k in info},
        "examples": [frame.to_dict(orient="split") for frame in model.parity_frames],
        "note": BatchScorer(model).columnar.note,
    }


def rebuild(payload: dict[str, Any]) -> BatchScorer:
    """An executor's BatchScorer from a shipment: digest checked, estimator loaded through the allow-list."""
    scorer = _SCORERS.get(payload["digest"])
    if scorer is not None:
        return scorer
    artifact = ArtifactBytes(dict(payload["files"]), payload["model_file"])
    if artifact.digest != payload["digest"]:
        raise RefusedModel("the shipped artifact is not the one the driver verified")
    features = [FeatureSpec(name, kind, required) for name, kind, required in payload["features"]]
    numbers = {f.name: "float64" for f in features if f.numeric}  # the others: object, NaN for missing
    frames = [pd.DataFrame(**split).astype(numbers) for split in payload["examples"]]
    model = LoadedModel(
        pipeline=load_estimator_bytes(artifact.model_bytes),
        features=features,
        positive_label=payload["positive_label"],
        max_batch_size=payload["max_batch_size"],
        info=dict(payload["info"]),
        parity_frames=frames,
    )
    scorer = BatchScorer(model)
    if scorer.columnar.note != payload["note"]:  # an executor whose libraries differ from the driver's
        raise RefusedModel(f"an executor scores by {scorer.columnar.note!r}, the driver by {payload['note']!r}")
    _SCORERS[payload["digest"]] = scorer
    return scorer


# --- executors ----------------------------------------------------------------------------------


def _score_partition(
    payload: Any,
    offsets: dict[tuple[str, int], int],
    names: list[str],
    schema_json: str,
    large: bool,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: each batch validated and scored; good and bad rows in one schema (reject_reason null: scored)."""
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    scorer = rebuild(payload.value)
    target = to_arrow_schema(StructType.fromJson(_json(schema_json)), prefers_large_types=large)
    seen: dict[tuple[str, int], int] = {}
    for batch in batches:
        for start, stop, file, first_row in _runs(batch, offsets, seen):
            part = batch.slice(start, stop - start).select(names)
            result = scorer.score(part, first_row)
            if result.scored is not None:
                yield _conform(result.scored, target, None)
            if result.rejects is not None:
                yield _conform(result.rejects, target, file)


def _runs(
    batch: pa.RecordBatch, offsets: dict[tuple[str, int], int], seen: dict[tuple[str, int], int]
) -> Iterator[tuple[int, int, str, int]]:
    """(start, stop, file, rows before it in its file) for each stretch of rows contiguous in one file."""
    rows = batch.num_rows
    files = pc.dictionary_encode(batch.column(_FILE))
    codes = files.indices.to_numpy(zero_copy_only=False)
    names = files.dictionary.to_pylist()
    if _START in batch.schema.names:  # CSV: the split's offset in its file, plus the rows seen of it so far
        starts = batch.column(_START).to_numpy(zero_copy_only=False)
        breaks = np.flatnonzero((np.diff(codes) != 0) | (np.diff(starts) != 0)) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), rows], strict=True):
            key = (names[codes[a]], int(starts[a]))
            before = offsets[key] + seen.get(key, 0)
            seen[key] = seen.get(key, 0) + (b - a)
            yield a, b, key[0], before
        return
    index = batch.column(_INDEX).to_numpy(zero_copy_only=False)  # Parquet: the row's index in its file
    breaks = np.flatnonzero((np.diff(codes) != 0) | (np.diff(index) != 1)) + 1
    for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), rows], strict=True):
        yield a, b, names[codes[a]], int(index[a])


def _conform(batch: pa.RecordBatch, target: pa.Schema, file: str | None) -> pa.RecordBatch:
    """`batch` in the union schema: the columns it lacks are null (the source file only in rejects)."""
    rows = batch.num_rows
    arrays = []
    for field in target:
        if field.name == SOURCE_FILE and file is not None:
            arrays.append(pa.array([file] * rows, type=field.type))
        elif field.name in batch.schema.names:
            arrays.append(batch.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(rows, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=target)


# --- Spark plumbing -----------------------------------------------------------------------------


def session(master: str | None) -> tuple[Any, bool]:
    """The active Spark session, or a new one (master `master`, else Spark's default: local[*]); whether it is new."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "--engine spark needs pyspark: pip install -e '.[spark]' (requirements/spark.txt) and Java 17"
        ) from None
    # mapInArrow hands pyarrow batches over: PySpark's pandas conversions, which warn about pandas 3, are not used.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    active = SparkSession.getActiveSession()
    if active is not None and (master is None or active.sparkContext.master == master):
        return active, False
    # Local Python workers must be this interpreter (its packages); a cluster sets spark.pyspark.python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("pipeline score")
    if master:
        builder = builder.master(master)
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def _ship_code(spark: Any) -> None:
    """Add the project's packages (api, gates, pipeline) to the executors' Python path, once per session."""
    import api

    root = Path(api.__file__).resolve().parents[1]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                info = zipfile.ZipInfo(str(path.relative_to(root)), date_time=(2000, 1, 1, 0, 0, 0))
                archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    name = f"score-code-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    key = f"{spark.sparkContext.applicationId}:{name}"
    if key in _SHIPPED:
        return
    path = Path(tempfile.gettempdir()) / name
    path.write_bytes(data)
    spark.sparkContext.addPyFile(str(path))
    _SHIPPED.add(key)


def _read(spark: Any, source: str, fmt: str) -> tuple[Any, list[str]]:
    if fmt == PARQUET:
        try:
            frame = spark.read.parquet(source)
        except Exception as exc:
            raise DataError(f"{source} is not a readable Parquet dataset: {_message(exc)}") from None
        names = list(frame.columns)
        refuse_duplicates(source, names)
        return frame, names
    names = _csv_header(spark, source)
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(n, StringType()) for n in names])
    options = {"header": "true", "mode": "FAILFAST", "quote": '"', "escape": '"', "multiLine": "false"}
    return spark.read.options(**options).schema(schema).csv(source), names


def _csv_header(spark: Any, source: str) -> list[str]:
    """The first file's header (as the local engine reads it: blank names named as pandas names them)."""
    try:
        first = spark.read.text(source).first()
    except Exception as exc:
        raise DataError(f"{source} is not a readable CSV: {_message(exc)}") from None
    if first is None:
        raise DataError(f"{source} is empty: a CSV needs a header naming its columns")
    try:
        header = next(csv.reader([first[0].lstrip("\ufeff")]), [])
    except csv.Error as exc:
        raise DataError(f"{source} is not a readable CSV: {exc}") from None
    return header_names(source, header)


def _split_offsets(frame: Any) -> tuple[dict[tuple[str, int], int], int]:
    """Per (file, split start): how many rows of the file come before the split (a count in the JVM); all rows."""
    from pyspark.sql import functions as F

    try:
        counted = (
            frame.select(F.col("_metadata.file_path").alias("f"), F.col("_metadata.file_block_start").alias("s"))
            .groupBy("f", "s")
            .count()
            .collect()
        )
    except Exception as exc:
        raise _failure(exc, "the input") from None
    offsets: dict[tuple[str, int], int] = {}
    running: dict[str, int] = {}
    for row in sorted(counted, key=lambda r: (r["f"], r["s"])):
        offsets[(row["f"], int(row["s"]))] = running.get(row["f"], 0)
        running[row["f"]] = running.get(row["f"], 0) + int(row["count"])
    return offsets, sum(running.values())


def _union_schema(scorer: BatchScorer, schema: Any) -> Any:
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    label = from_arrow_type(scorer.labels.type)
    added = [
        StructField(ADDED[0], label),
        StructField(ADDED[1], DoubleType()),
        StructField(ADDED[2], StringType()),
        StructField(ROW, LongType()),
        StructField(REJECT_REASON, StringType()),
        StructField(SOURCE_FILE, StringType()),
    ]
    return StructType([*schema.fields, *added])


def _is_folder(spark: Any, source: str) -> bool:
    return bool(_FileSystem(spark).is_folder(source))


def _input_format(spark: Any, input_path: str, source: str, folder: bool) -> str:
    """Parquet by the suffix (of the file or folder), or a local file's or folder's magic bytes; else CSV."""
    name = urlparse(source).path.rstrip("/")
    if Path(name).suffix.lower() in PARQUET_SUFFIXES:
        return PARQUET
    if _is_local(input_path):
        path = Path(input_path)
        files = [path]
        if folder:
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        for candidate in files[:1]:
            with contextlib.suppress(OSError), candidate.open("rb") as f:
                if f.read(4) == PARQUET_MAGIC:
                    return PARQUET
    return CSV


class _FileSystem:
    """Hadoop's FileSystem for paths of any scheme Spark can write (local, hdfs, s3a, ...)."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _path(self, uri: str) -> tuple[Any, Any]:
        path = self._jvm.org.apache.hadoop.fs.Path(_uri(uri))
        return path.getFileSystem(self._conf), path

    def is_folder(self, uri: str) -> bool:
        fs, path = self._path(uri)
        return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())

    def sibling(self, uri: str) -> str:
        """A new hidden folder name next to `uri` (nothing is created)."""
        target = _uri(uri).rstrip("/")
        head, _, tail = target.rpartition("/")
        return f"{head}/.{tail}.{secrets.token_hex(4)}.tmp"

    def replace(self, staged: str, target: str) -> None:
        """Put the folder `staged` at `target`; an earlier dataset there goes only once the new one is in place."""
        fs, new = self._path(staged)
        _, old = self._path(target)
        aside = None
        if fs.exists(old):
            aside = self._path(self.sibling(target))[1]
            if not fs.rename(old, aside):
                raise OSError(f"cannot move the earlier {target} aside")
        if not fs.rename(new, old):
            if aside is not None:
                fs.rename(aside, old)
            raise OSError(f"cannot move the new dataset into {target}")
        if aside is not None:
            fs.delete(aside, True)

    def delete(self, uri: str) -> None:
        fs, path = self._path(uri)
        if fs.exists(path):
            fs.delete(path, True)


def _uri(path: str) -> str:
    """A URI Spark and Hadoop read the same way: a local path becomes an absolute file: URI."""
    return Path(path).resolve().as_uri() if _is_local(path) else path


def _is_local(path: str) -> bool:
    """A plain path (no scheme): checked here like the local engine's; URIs are Spark's to resolve."""
    return urlparse(path).scheme == ""


def _rejects_uri(output: str) -> str:
    head, _, tail = output.rstrip("/").rpartition("/")
    stem, dot, suffix = tail.partition(".")
    return f"{head}/{stem}.rejects{dot}{suffix or PARQUET}" if dot else f"{head}/{stem}.rejects.{PARQUET}"


def _col(name: str) -> Any:
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _json(text: str) -> Any:
    import json

    return json.loads(text)


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():  # a Python worker's error: its last line names it
        if re.match(r"^\w*(Error|Exception|Refused\w*): ", line.strip()):
            text = line.strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _failure(exc: BaseException, where: str) -> Exception:
    """A Spark job's failure as the CLI's error: unreadable data is exit 2, a refused model exit 1."""
    text = str(exc)
    found = re.findall(r"(DataError|RefusedModel|CheckFailed): ([^\n]+)", text)
    if found:
        kind, message = found[-1]
        return DataError(message) if kind == "DataError" else CheckFailed(f"refused on an executor: {message}")
    if "Malformed" in text or "MALFORMED" in text:
        return DataError(f"{where} is not a readable CSV: a malformed row (a field too many or too few, or a quote)")
    return exc if isinstance(exc, Exception) else RuntimeError(text)
