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
(spark_partitions.py: the column validator and the compiled path on the same
pyarrow batches; mapInPandas would add a pandas round trip and nothing else). Output: the
predictions and the rejects as Parquet datasets (folders), each written to a
hidden sibling folder and renamed into place only when the job succeeds.

Row numbers are those of the local engine: 1 is the first data row of the
file (spark_row_numbers.py). A folder of files is numbered per file, and its
rejects name the file (`source_file`). The session and the code shipped to the
executors: spark_session.py; the datasets moved into place: hadoop_files.py.

CSV is read as text with RFC 4180 quoting (a doubled quote escapes one), one
record per line (a quoted line break would make the file unsplittable; use
Parquet for such data), malformed rows failing the job. Spark reads a blank
unquoted cell as null where the local engine keeps "": both are missing.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from api.model.loaded_model import LoadedModel
from pipeline.core.errors import CheckFailed, ConfigError, DataError
from pipeline.runtime.output_files import Protected, check_targets
from pipeline.scoring.batch_scorer import ADDED, REJECT_REASON, ROW, BatchScorer, rejects_path_for
from pipeline.scoring.byte_caps import ByteCaps
from pipeline.scoring.engine import ScoreSummary
from pipeline.scoring.hadoop_files import HadoopFileSystem, is_local, to_uri
from pipeline.scoring.spark_failures import failure, message
from pipeline.scoring.spark_partitions import SOURCE_FILE, score_partition, shipment
from pipeline.scoring.spark_row_numbers import place_columns, split_offsets
from pipeline.scoring.spark_session import session, ship_code
from pipeline.scoring.table_formats import (
    CSV,
    PARQUET,
    PARQUET_MAGIC,
    PARQUET_SUFFIXES,
    header_names,
    refuse_duplicates,
)


@dataclass(frozen=True)
class SparkEngine:
    """ScoringEngine on Spark: `client` fetches the verified artifact again to ship it, `master` names the cluster."""

    client: Any
    master: str | None = None
    caps: ByteCaps = field(default_factory=ByteCaps)

    def check_paths(self, input_path: str, output: str, fmt: str | None, protected: Sequence[Protected]) -> None:
        """As check_paths (below), for the stage."""
        check_paths(input_path, output, fmt, protected)

    def score(
        self, model: LoadedModel, input_path: str, output: str, fmt: str | None, protected: Sequence[Protected]
    ) -> ScoreSummary:
        """score_dataset with this engine's client, master and caps."""
        return score_dataset(model, self.client, input_path, output, fmt, self.master, protected, self.caps)


def score_dataset(
    model: LoadedModel,
    client: Any,
    input_path: str,
    output: str,
    fmt: str | None = None,
    master: str | None = None,
    protected: Iterable[Protected] = (),
    caps: ByteCaps | None = None,
) -> ScoreSummary:
    """Score `input_path` (a CSV or Parquet file, or a folder of them) on Spark into Parquet datasets.

    `caps`: the byte caps each batch is held to on the executors (default: byte_caps.py's).
    """
    rejects = check_paths(input_path, output, fmt, protected)
    payload = shipment(model, client)
    spark, created = session(master)
    try:
        return _score(spark, model, payload, input_path, output, rejects, caps or ByteCaps())
    finally:
        if created:
            spark.stop()


def check_paths(input_path: str, output: str, fmt: str | None, protected: Iterable[Protected] = ()) -> str:
    """The rejects dataset's path, once the paths are known to be usable (local paths: as the local engine checks)."""
    if fmt not in (None, PARQUET) or (fmt is None and output.lower().endswith(".csv")):
        raise ConfigError(f"the spark engine writes Parquet datasets (folders), not {fmt or 'csv'}; use .parquet")
    rejects = str(rejects_path_for(Path(output), PARQUET)) if is_local(output) else _rejects_uri(output)
    if is_local(input_path) and not Path(input_path).exists():
        raise DataError(f"input {input_path} does not exist")
    if is_local(output) and is_local(rejects):
        guards = [Protected("the input", Path(input_path), tree=Path(input_path).is_dir()), *protected]
        check_targets({"output": Path(output), "rejects file": Path(rejects)}, guards, folders=True)
    return rejects


def _score(
    spark: Any, model: LoadedModel, payload: dict[str, Any], input_path: str, output: str, rejects: str, caps: ByteCaps
) -> ScoreSummary:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    ship_code(spark)
    source = to_uri(input_path)
    folder = _is_folder(spark, source)
    fmt = _input_format(spark, input_path, source, folder)
    scorer = BatchScorer(model)  # the driver's: checks columns, names the path that scores
    frame, names = _read(spark, source, fmt)
    scorer.check_columns(names, input_path)
    if folder and SOURCE_FILE in names:
        raise DataError(f"{input_path}: column {SOURCE_FILE!r} would be written twice (the rejects name the file)")
    meta = place_columns(csv=fmt == CSV)
    offsets: dict[tuple[str, int], int] = {}
    if fmt == CSV:
        offsets, expected = split_offsets(frame)
    else:
        expected = int(frame.count())  # from the files' footers
    scored_schema = _union_schema(scorer, frame.schema)
    large = spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false").lower() == "true"
    run = partial(
        score_partition, spark.sparkContext.broadcast(payload), offsets, names, scored_schema.json(), large, caps
    )
    result = frame.select(*(_col(n) for n in names), *meta).mapInArrow(run, scored_schema)
    result = result.persist(StorageLevel.DISK_ONLY)
    kept = [_col(n) for n in (*names, *ADDED)]
    refused = [_col(n) for n in (ROW, *names, REJECT_REASON, *([SOURCE_FILE] if folder else []))]
    fs = HadoopFileSystem(spark)
    staged = {target: fs.sibling(target) for target in (output, rejects)}
    try:
        try:
            result.where(F.col(REJECT_REASON).isNull()).select(*kept).write.parquet(staged[output])
            result.where(F.col(REJECT_REASON).isNotNull()).select(*refused).write.parquet(staged[rejects])
        except Exception as exc:
            raise failure(exc, input_path) from None
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


def _read(spark: Any, source: str, fmt: str) -> tuple[Any, list[str]]:
    if fmt == PARQUET:
        try:
            frame = spark.read.parquet(source)
        except Exception as exc:
            raise DataError(f"{source} is not a readable Parquet dataset: {message(exc)}") from None
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
        raise DataError(f"{source} is not a readable CSV: {message(exc)}") from None
    if first is None:
        raise DataError(f"{source} is empty: a CSV needs a header naming its columns")
    try:
        header = next(csv.reader([first[0].lstrip("\ufeff")]), [])
    except csv.Error as exc:
        raise DataError(f"{source} is not a readable CSV: {exc}") from None
    return header_names(source, header)


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
    return bool(HadoopFileSystem(spark).is_folder(source))


def _input_format(spark: Any, input_path: str, source: str, folder: bool) -> str:
    """Parquet by the suffix (of the file or folder), or a local file's or folder's magic bytes; else CSV."""
    name = urlparse(source).path.rstrip("/")
    if Path(name).suffix.lower() in PARQUET_SUFFIXES:
        return PARQUET
    if is_local(input_path):
        path = Path(input_path)
        files = [path]
        if folder:
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        for candidate in files[:1]:
            with contextlib.suppress(OSError), candidate.open("rb") as f:
                if f.read(4) == PARQUET_MAGIC:
                    return PARQUET
    return CSV


def _rejects_uri(output: str) -> str:
    head, _, tail = output.rstrip("/").rpartition("/")
    stem, dot, suffix = tail.partition(".")
    return f"{head}/{stem}.rejects{dot}{suffix or PARQUET}" if dot else f"{head}/{stem}.rejects.{PARQUET}"


def _col(name: str) -> Any:
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")
