"""Fixtures of the integration tests: registries with released versions, deployed once per session."""

from __future__ import annotations

import os

import pytest

from .released import Releases


@pytest.fixture(scope="session")
def releases(tmp_path_factory, churn_csv, empty_mlflow_db) -> Releases:
    """Released versions to copy into a test's project: `releases.restore(project, 2)` stands for two deploys."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers of this run share them (pytest-N/releases)
        return Releases(tmp_path_factory.getbasetemp().parent / "releases", churn_csv, empty_mlflow_db)
    return Releases(tmp_path_factory.mktemp("releases"), churn_csv, empty_mlflow_db)


@pytest.fixture(scope="session")
def spark():
    """One local Spark for every Spark test: small splits and Arrow batches, so rows spread across both."""
    import sys

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.files.maxPartitionBytes", str(48 * 1024))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
