"""The Spark session the engine runs in, and the project's code shipped to its executors."""

from __future__ import annotations

import hashlib
import io
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

PACKAGES = ("api", "gates", "pipeline", "families", "features")  # the project's code, shipped to the executors
BATCH_ROWS = 32_768  # rows per Arrow batch handed to Python (Spark's default is 10,000)
_SHIPPED: set[str] = set()  # code archives already added to this driver's SparkContext


def session(master: str | None) -> tuple[Any, bool]:
    """The active Spark session, or a new one (master `master`, else Spark's default: local[*]); whether it is new.

    Local Python workers run PYSPARK_PYTHON, which the score stage sets to its own interpreter when unset.
    """
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
    builder = SparkSession.builder.appName("pipeline score")
    if master:
        builder = builder.master(master)
    builder = builder.config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def ship_code(spark: Any) -> None:
    """Add the project's packages (PACKAGES) to the executors' Python path, once per session."""
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
