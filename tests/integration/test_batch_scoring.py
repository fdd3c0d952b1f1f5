"""`pipeline score`: a CSV or Parquet file scored by a released version, bad rows set aside with their reasons."""

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.data import coerce_to_schema
from pipeline.scoring import csv_reader, local_engine, spark_engine, table_writer
from pipeline.scoring.formula_cells import neutralise
from pipeline.store.training_runs import load_feature_schema

from ..conftest import ROOT
from .released import QuietCli
from .test_flow import deploy

pytestmark = pytest.mark.integration


def test_score_writes_predictions_with_the_version_and_rejects_bad_rows_with_the_reason(project, cli, deployed):
    version, _ = deployed
    frame = pd.read_csv("data/churn.csv", dtype=str, keep_default_na=False).head(500).drop(columns=["Churn"])
    frame.loc[3, "tenure"] = "abc"
    frame.loc[7, "gender"] = ""
    frame.loc[9, "MonthlyCharges"] = "1e999"
    frame.to_csv("in.csv", index=False)

    assert cli("score", "--input", "in.csv", "--output", "out/predictions.csv") == 0, cli.err
    scored = pd.read_csv("out/predictions.csv", dtype={"model_version": str})
    rejects = pd.read_csv("out/predictions.rejects.csv")
    assert len(scored) == 497 and set(scored["model_version"]) == {version}
    assert list(rejects["row"]) == [4, 8, 10] and list(rejects["customerID"]) == list(frame["customerID"][[3, 7, 9]])
    assert "field 'tenure': input should be a valid number, got 'abc'" in rejects["reject_reason"][0]
    assert "field 'gender': is missing" in rejects["reject_reason"][1]
    assert "finite number" in rejects["reject_reason"][2]

    # the same predictions as MLflow's own pyfunc of that version, row for row
    mv = mlflow.MlflowClient().get_model_version("churn-classifier", version)
    good = frame.drop(index=[3, 7, 9])
    X = coerce_to_schema(good, load_feature_schema(mlflow.MlflowClient(), mv.run_id))
    model = mlflow.pyfunc.load_model(f"models:/churn-classifier/{version}")
    expected, proba = model.predict(X), model.get_raw_model().predict_proba(X)[:, 1]
    assert list(scored["prediction"]) == list(expected) and list(scored["customerID"]) == list(good["customerID"])
    assert np.allclose(scored["probability"], proba, rtol=0, atol=1e-12)


def test_score_refuses_what_it_cannot_do_with_a_clear_exit_code(project, cli, deployed):
    pd.read_csv("data/churn.csv").head(5).drop(columns=["tenure"]).to_csv("no-tenure.csv", index=False)
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv") == 2 and "'tenure' missing" in cli.err
    assert cli("score", "--input", "nope.csv", "--output", "o.csv") == 2 and "does not exist" in cli.err
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv", "--version", "9") == 1
    assert "has no version 9" in cli.err
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv", "--alias", "staging") == 2
    assert "no alias @staging" in cli.err
    # engine and formats are validated by the command (the workflow passes its inputs through)
    assert "--engine must be one of local, spark, got 'dask'" in refused(cli, "--input", "in.csv", "--output",
                                                                      "o.csv", "--engine", "dask")  # fmt: skip
    assert "--master names a Spark cluster" in refused(cli, "--input", "in.csv", "--output", "o.csv", "--master", "x")
    line = refused(cli, "--input", "in.csv", "--output", "o.csv", "--format", "xlsx")
    assert line == "error: --format must be one of csv, parquet, got 'xlsx'"
    line = refused(cli, "--input", "in.csv", "--output", "o.csv", "--format", "parquet")
    assert line == "error: --format parquet but the output o.csv ends in .csv; make them agree"
    customers(3).assign(prediction="old").to_csv("scored-before.csv", index=False)
    line = refused(cli, "--input", "scored-before.csv", "--output", "o.csv")
    assert "column(s) 'prediction' would be written twice" in line
    assert not Path("o.csv").exists() and not Path("o.rejects.csv").exists()


# ---- score never destroys a user's file ----


@pytest.fixture(scope="module")
def deployed_store(tmp_path_factory, churn_csv, empty_mlflow_db):
    """One deployed registry for the module: its mlflow.db (artifacts stay in this folder for the session)."""
    folder = tmp_path_factory.mktemp("deployed")
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    (folder / "data").mkdir()
    shutil.copy(churn_csv, folder / "data" / "churn.csv")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_SHA", "GITHUB_ACTOR"):
            mp.delenv(name, raising=False)
        version = deploy(QuietCli())
    return folder, version


@pytest.fixture
def deployed(project, cli, deployed_store):
    """This project's registry holds the deployed version; `in.csv` is a clean input. (version, status)"""
    folder, version = deployed_store
    shutil.copy(folder / "mlflow.db", project / "mlflow.db")
    customers().to_csv("in.csv", index=False)
    state = cli.status()
    assert state["aliases"]["production"] == version
    return version, state


@pytest.fixture(scope="module")
def loaded(deployed_store):
    """(the deployed version loaded once as score loads it, its client): for tests that call the engines directly."""
    from mlflow.tracking import MlflowClient

    from api.settings import Settings
    from api.source import RegistrySource

    folder, version = deployed_store
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    settings = Settings.probing_as_the_environment_says(  # the session's probe cache, as score reads it
        model_name="churn-classifier", model_version=version, max_batch_size=local_engine.CHUNK_ROWS
    )
    return RegistrySource(settings, client=client).load(version), client


def customers(rows: int = 60) -> pd.DataFrame:
    return pd.read_csv("data/churn.csv", dtype=str, keep_default_na=False).head(rows).drop(columns=["Churn"])


def small_batches(monkeypatch, rows: int = 10) -> None:
    """Batches of `rows` rows, CSV blocks of about as many, and a progress line for every batch."""
    monkeypatch.setattr(local_engine, "CHUNK_ROWS", rows)
    monkeypatch.setattr(csv_reader, "BLOCK_BYTES", rows * 180)
    monkeypatch.setattr(local_engine, "PROGRESS_EVERY_S", {True: 0.0, False: 0.0})


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with a digest of its bytes (the store aside: reading may touch it)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
        if not p.name.startswith("mlflow.db")
    }


def refused(cli, *args: str) -> str:
    """Run score; assert it exits 2 and return its error line (the only one)."""
    assert cli("score", *args) == 2, cli.err
    [line] = [x for x in cli.err.splitlines() if x.startswith("error:")]
    return line


@pytest.mark.parametrize(
    ("make", "output"),
    [
        (lambda: None, "in.csv"),
        (lambda: None, "./in.csv"),
        (lambda: None, "sub/../in.csv"),
        (lambda: Path("link.csv").symlink_to("in.csv"), "link.csv"),
        (lambda: os.link("in.csv", "hard.csv"), "hard.csv"),
        (lambda: Path("here").symlink_to("."), "here/in.csv"),
    ],
    ids=["same-name", "dot-slash", "dot-dot", "symlink", "hard-link", "symlinked-folder"],
)
def test_score_refuses_an_output_that_is_the_input_however_it_is_spelled(project, cli, deployed, make, output):
    Path("sub").mkdir()
    make()
    before = snapshot(project)
    line = refused(cli, "--input", "in.csv", "--output", output)
    assert line == f"error: refusing to write the output {Path(output)}: it is the input in.csv"
    assert snapshot(project) == before


def test_score_probes_under_the_environments_probe_limits(project, cli, deployed, monkeypatch):
    # the probe child's memory limit is PROBE_MEMORY_MB's, as for every release check: too small, it is refused
    monkeypatch.setenv("PROBE_MEMORY_MB", "1")
    monkeypatch.setenv("PROBE_CACHE_DIR", "")  # no remembered acceptance: the child runs
    assert cli("score", "--input", "in.csv", "--output", "o.csv") == 1, cli.err
    assert f"version {deployed[0]} refused" in cli.err and not Path("o.csv").exists()
    monkeypatch.setenv("PROBE_MEMORY_MB", "many")
    assert cli("score", "--input", "in.csv", "--output", "o.csv") == 2
    assert "PROBE_MEMORY_MB='many' is not a valid int" in cli.err


def test_score_refuses_an_output_that_is_the_tracking_store(project, cli, deployed):
    _, state = deployed
    store = project / "mlflow.db"
    store_bytes = store.read_bytes()
    Path("db-link").symlink_to("mlflow.db")
    before = snapshot(project)
    for output in ("mlflow.db", "./mlflow.db", str(store), "db-link"):
        line = refused(cli, "--input", "in.csv", "--output", output)
        assert line == f"error: refusing to write the output {Path(output)}: it is the tracking store {store}"
    line = refused(cli, "--input", "in.csv", "--output", "mlflow.db-wal")
    assert f"it is the tracking store's journal {store}-wal" in line
    assert store.read_bytes() == store_bytes and snapshot(project) == before
    assert cli.status() == state and state["versions"]


def test_score_refuses_a_rejects_file_that_is_the_tracking_store(project, cli, deployed, monkeypatch):
    _, state = deployed
    store = project / "mlflow.rejects.csv"  # the rejects file of `--output mlflow.csv`
    Path("mlflow.db").rename(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    store_bytes = store.read_bytes()
    before = snapshot(project)
    line = refused(cli, "--input", "in.csv", "--output", "mlflow.csv")
    assert line == f"error: refusing to write the rejects file mlflow.rejects.csv: it is the tracking store {store}"
    assert store.read_bytes() == store_bytes and snapshot(project) == before
    assert cli.status() == state


def test_score_refuses_writing_into_the_local_artifact_store(project, cli, deployed, deployed_store):
    _, state = deployed
    Path("mlartifacts").mkdir()  # registry.artifact_location of params.yaml
    experiment = mlflow.MlflowClient().get_experiment_by_name("churn")
    artifacts = Path(experiment.artifact_location.removeprefix("file://"))  # where this store's artifacts are
    before, stored = snapshot(project), snapshot(artifacts)
    line = refused(cli, "--input", "in.csv", "--output", "mlartifacts/p.csv")
    assert line == "error: refusing to write the output mlartifacts/p.csv: it is inside the artifact store mlartifacts"
    inside = artifacts / "new" / "p.csv"
    line = refused(cli, "--input", "in.csv", "--output", str(inside))
    assert line == f"error: refusing to write the output {inside}: it is inside the artifact store {artifacts}"
    assert snapshot(project) == before and snapshot(artifacts) == stored
    assert cli.status() == state


def test_score_refuses_a_rejects_file_that_is_the_input(project, cli, deployed):
    customers().to_csv("day.rejects.csv", index=False)
    before = snapshot(project)
    line = refused(cli, "--input", "day.rejects.csv", "--output", "day.csv")
    assert line == "error: refusing to write the rejects file day.rejects.csv: it is the input day.rejects.csv"
    assert snapshot(project) == before


def test_score_refuses_an_output_that_is_its_own_rejects_file(project, cli, deployed):
    Path("p.rejects.csv").write_text("kept\n")
    Path("p.csv").symlink_to("p.rejects.csv")
    os.link("p.rejects.csv", "q.csv")
    Path("q.rejects.csv").symlink_to("q.csv")
    before = snapshot(project)
    line = refused(cli, "--input", "in.csv", "--output", "p.csv")
    assert line == "error: refusing to write the output p.csv: it is the rejects file p.rejects.csv"
    line = refused(cli, "--input", "in.csv", "--output", "q.csv")
    assert line == "error: refusing to write the output q.csv: it is the rejects file q.rejects.csv"
    assert snapshot(project) == before and Path("p.rejects.csv").read_text() == "kept\n"


def test_a_bad_row_in_a_later_chunk_leaves_nothing_new_and_an_earlier_output_as_it_was(
    project, cli, deployed, monkeypatch
):
    small_batches(monkeypatch)
    frame = customers()
    frame.to_csv("in.csv", index=False)
    assert cli("score", "--input", "in.csv", "--output", "out/p.csv") == 0, cli.err  # an earlier run
    frame.loc[3, "tenure"] = "abc"  # a reject in chunk 1: the rejects file is being written too
    lines = frame.to_csv(index=False).splitlines()
    lines[45] += ",an extra field"  # chunk 5 cannot be read
    Path("in.csv").write_text("\n".join(lines) + "\n")
    before = snapshot(project)
    assert "in.csv is not a readable CSV" in refused(cli, "--input", "in.csv", "--output", "out/p.csv")
    done = [int(n.replace(",", "")) for n in re.findall(r"\] ([\d,]+) rows", cli.err)]
    assert done and 0 < max(done) < 60  # batches were scored before it failed
    assert snapshot(project) == before  # the earlier predictions, no rejects file, no temp file
    assert "in.csv is not a readable CSV" in refused(cli, "--input", "in.csv", "--output", "new/deeper/p.csv")
    assert snapshot(project) == before  # not even the folders


def test_the_scoring_function_takes_a_chunk_size_and_fails_cleanly_in_a_later_chunk(project, deployed, monkeypatch):
    from api.settings import Settings
    from api.source import RegistrySource
    from pipeline.core.errors import DataError

    version, _ = deployed
    settings = Settings.probing_as_the_environment_says(  # the session's probe cache
        model_name="churn-classifier", model_alias="production", max_batch_size=10
    )
    model = RegistrySource(settings, client=mlflow.MlflowClient(), verify_key=None).load(version)
    frame = customers(30)
    frame.loc[[5, 25], "gender"] = ""
    frame.to_csv("in.csv", index=False)
    summary = local_engine.score_file(model, Path("in.csv"), Path("p.csv"), chunk_rows=10)
    assert (summary.scored, summary.rejected) == (28, 2)
    assert list(pd.read_csv("p.rejects.csv")["row"]) == [6, 26]
    lines = frame.to_csv(index=False).splitlines()
    lines[22] += ",x"  # a row of the third block
    Path("in.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(csv_reader, "BLOCK_BYTES", 2048)
    before = snapshot(project)
    with pytest.raises(DataError, match=r"not a readable CSV: a row.* has 21 fields where the header names 20"):
        local_engine.score_file(model, Path("in.csv"), Path("p.csv"), chunk_rows=10)
    assert snapshot(project) == before


def test_a_write_failure_part_way_leaves_the_earlier_output_and_no_stray_file(project, cli, deployed, monkeypatch):
    """A full disk in the second batch, simulated: pyarrow's writer raises ENOSPC (as it does, without a file name).

    Chosen over a read-only folder because the tests run as root, which ignores permissions;
    tests/unit/test_output_files.py makes a real write fail with RLIMIT_FSIZE.
    """
    small_batches(monkeypatch)
    frame = customers()
    frame.loc[2, "tenure"] = "abc"  # so a rejects file is written too
    frame.to_csv("in.csv", index=False)
    assert cli("score", "--input", "in.csv", "--output", "p.csv") == 0, cli.err
    before = snapshot(project)
    assert {"p.csv", "p.rejects.csv"} <= set(before)
    real, calls = table_writer.Sink._open, []

    class Full:
        def __init__(self, writer, name):
            self.writer, self.name = writer, name

        def write_batch(self, batch):
            calls.append(self.name)
            # the predictions of batch 2 (each file is written by a thread of its own: no order between the two)
            if self.name == "p.csv" and calls.count("p.csv") == 2:
                raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
            self.writer.write_batch(batch)

        def close(self):
            self.writer.close()

    monkeypatch.setattr(table_writer.Sink, "_open", lambda self, schema: Full(real(self, schema), self.target.name))
    assert cli("score", "--input", "in.csv", "--output", "p.csv") == 3
    monkeypatch.undo()
    assert "error: storage is full: cannot write p.csv" in cli.err and calls.count("p.csv") == 2
    assert snapshot(project) == before


def test_score_refuses_duplicate_column_names(project, cli, deployed):
    header, *rows = customers(5).to_csv(index=False).splitlines()
    Path("dup.csv").write_text("\n".join([header + ",tenure", *(r + ",99" for r in rows)]) + "\n")
    before = snapshot(project)
    line = refused(cli, "--input", "dup.csv", "--output", "p.csv")
    assert line == "error: dup.csv: column 'tenure' appears more than once in the header; rename or drop one"
    assert snapshot(project) == before


def test_formula_cells_are_neutralised_in_predictions_and_rejects(project, cli, deployed):
    frame = customers(6)
    frame["note"] = ['=HYPERLINK("http://x")', "+1+1", "-3.5", "@SUM(A1)", "\t=1", "plain"]
    frame.loc[0, "customerID"] = "=cmd|' /C calc'!A0"
    frame.loc[4, "tenure"] = "=1+1"  # a reject, whose reason quotes the formula
    frame.loc[1, "MonthlyCharges"] = "-3.5"  # a number stays a number
    frame.to_csv("in.csv", index=False)
    assert cli("score", "--input", "in.csv", "--output", "p.csv") == 0, cli.err
    scored = pd.read_csv("p.csv", dtype=str, keep_default_na=False)
    rejects = pd.read_csv("p.rejects.csv", dtype=str, keep_default_na=False)
    assert list(scored["note"]) == ['\'=HYPERLINK("http://x")', "'+1+1", "-3.5", "'@SUM(A1)", "plain"]
    assert scored["customerID"][0] == "'=cmd|' /C calc'!A0" and scored["MonthlyCharges"][1] == "-3.5"
    assert list(rejects["note"]) == ["'\t=1"] and rejects["tenure"][0] == "'=1+1"
    assert "got '=1+1'" in rejects["reject_reason"][0]
    for table in (scored, rejects):
        assert [c for c in table.to_numpy().ravel() if neutralise(c) != c] == []  # nothing left to neutralise


# ---- CSV and Parquet, in and out; bad rows spread across batches ----


def hostile_frame(rows: int = 1500) -> tuple[pd.DataFrame, dict[int, str]]:
    """Customers with a row id (`rid`) and bad rows spread through; {position: what its reason says}."""
    frame = pd.read_csv("data/churn.csv", dtype=str, keep_default_na=False).head(rows).drop(columns=["Churn"])
    frame.insert(0, "rid", [str(i) for i in range(rows)])
    kinds = [
        ("tenure", "abc", "field 'tenure': input should be a valid number, got 'abc'"),
        ("gender", "", "field 'gender': is missing"),
        ("MonthlyCharges", "1e999", "field 'MonthlyCharges': input should be a finite number, got inf"),
        ("TotalCharges", "inf", "field 'TotalCharges': input should be a finite number, got inf"),
        ("Contract", "  ", "field 'Contract': is missing"),
        ("tenure", "nan", "field 'tenure': input should be a valid number, got 'nan'"),
    ]
    bad = {}
    for n, i in enumerate(range(5, rows, 97)):
        field, value, why = kinds[n % len(kinds)]
        frame.loc[i, field] = value
        bad[i] = why
    frame.loc[11, "tenure"] = " 7 "  # odd but good: spaces, a blank optional field, padded text
    frame.loc[12, "TotalCharges"] = ""
    frame.loc[13, "gender"] = " Male "
    return frame, bad


def read_any(path: str) -> pd.DataFrame:
    if path.endswith(".parquet"):
        return pd.read_parquet(path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame.astype({k: v for k, v in {"probability": float, "row": int}.items() if k in frame.columns})


def test_csv_and_parquet_in_and_out_give_the_same_rows_and_rejects_across_batches(project, loaded, monkeypatch):
    model, _ = loaded
    small_batches(monkeypatch, 128)
    frame, bad = hostile_frame()
    frame.to_csv("in.csv", index=False)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), "in.parquet", row_group_size=200)
    outputs = {}
    for source, output, fmt in [("in.csv", "a.csv", None), ("in.csv", "b.parquet", None), ("in.parquet", "c.csv", None),
                                ("in.parquet", "d.parquet", None), ("in.csv", "e.out", "parquet")]:  # fmt: skip
        summary = local_engine.score_file(model, Path(source), Path(output), fmt)
        assert (summary.scored, summary.rejected) == (len(frame) - len(bad), len(bad))
        rejects = str(summary.rejects_path)
        assert rejects == output.replace(".", ".rejects.")  # the output's suffix, whatever the format
        read = pd.read_parquet if fmt else read_any
        outputs[output] = read(output), read(rejects)
    first_scored, first_rejects = outputs["a.csv"]
    assert list(first_rejects["row"]) == [i + 1 for i in sorted(bad)]  # 1 = the first data row
    assert list(first_rejects["reject_reason"]) == [bad[i] for i in sorted(bad)]
    assert list(first_rejects["rid"]) == [str(i) for i in sorted(bad)]
    assert len(first_scored) + len(first_rejects) == len(frame)  # nothing lost
    assert list(first_scored["rid"]) == [r for r in frame["rid"] if int(r) not in bad]
    assert first_scored.loc[first_scored["rid"] == "11", "tenure"].item() == " 7 "  # the input's text, as it was
    for output, (scored, rejects) in outputs.items():
        assert list(scored["rid"]) == list(first_scored["rid"]), output
        assert list(scored["prediction"]) == list(first_scored["prediction"]), output
        assert list(scored["probability"].astype(float)) == list(first_scored["probability"]), output
        assert [int(r) for r in rejects["row"]] == list(first_rejects["row"]), output
        assert list(rejects["reject_reason"]) == list(first_rejects["reject_reason"]), output
    typed = pq.read_schema("b.parquet")
    assert typed.field("probability").type == pa.float64() and typed.field("tenure").type == pa.string()
    assert typed.field("gender").type == pa.string()  # a text feature the reader dictionary-encodes: text again
    assert pq.read_schema("b.rejects.parquet").field("row").type == pa.int64()
    assert pq.read_schema("b.rejects.parquet").field("gender").type == pa.string()


def test_typed_parquet_values_are_the_values_a_client_would_send(project, loaded):
    model, _ = loaded
    frame = customers(8)
    typed = frame.astype({"SeniorCitizen": "int64", "tenure": "float64", "MonthlyCharges": "float64"})
    typed["TotalCharges"] = pd.to_numeric(frame["TotalCharges"], errors="coerce")
    typed.loc[1, "TotalCharges"] = None  # missing: imputed, as a blank cell is
    typed.loc[2, "tenure"] = float("nan")  # a number that is not one: refused
    typed.loc[3, "gender"] = None  # missing, and required
    table = pa.Table.from_pandas(typed, preserve_index=False)  # NaN becomes null (missing) here...
    nan = pa.array(typed["tenure"].tolist(), type=pa.float64(), from_pandas=False)  # ...so the NaN is put back
    table = table.set_column(table.schema.get_field_index("tenure"), "tenure", nan)
    pq.write_table(table, "typed.parquet")
    local_engine.score_file(model, Path("typed.parquet"), Path("typed.csv"))
    rejects = pd.read_csv("typed.rejects.csv")
    assert list(rejects["row"]) == [3, 4]
    assert list(rejects["reject_reason"]) == [
        "field 'tenure': input should be a finite number, got nan",
        "field 'gender': is missing",
    ]
    text = frame.drop(index=[2, 3])
    text.loc[1, "TotalCharges"] = ""
    text.to_csv("text.csv", index=False)
    local_engine.score_file(model, Path("text.csv"), Path("text.csv.out"), "csv")
    assert pd.read_csv("typed.csv")["probability"].tolist() == pd.read_csv("text.csv.out")["probability"].tolist()


def test_parquet_output_keeps_text_as_it_was_and_refuses_what_csv_refuses(project, cli, deployed):
    frame = customers(4)
    frame["note"] = ['=HYPERLINK("http://x")', "+1+1", "-3.5", "@SUM(A1)"]
    frame.loc[3, "tenure"] = "=1+1"
    frame.to_csv("in.csv", index=False)
    assert cli("score", "--input", "in.csv", "--output", "p.parquet") == 0, cli.err
    assert list(pd.read_parquet("p.parquet")["note"]) == ['=HYPERLINK("http://x")', "+1+1", "-3.5"]  # typed data
    assert pd.read_parquet("p.rejects.parquet")["tenure"].tolist() == ["=1+1"]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, "in.parquet")
    before = snapshot(project)
    line = refused(cli, "--input", "in.parquet", "--output", "in.parquet")
    assert line == "error: refusing to write the output in.parquet: it is the input in.parquet"
    line = refused(cli, "--input", "in.parquet", "--output", "p.csv", "--format", "parquet")
    assert "--format parquet but the output p.csv ends in .csv" in line
    pq.write_table(pa.Table.from_arrays([*table.columns, table["tenure"]], names=[*table.column_names, "tenure"]),
                   "dup.parquet")  # fmt: skip
    line = refused(cli, "--input", "dup.parquet", "--output", "q.parquet")
    assert line == "error: dup.parquet: column 'tenure' appears more than once in the header; rename or drop one"
    Path("broken.parquet").write_bytes(b"PAR1 not really")
    assert "broken.parquet is not a readable Parquet file" in refused(cli, "--input", "broken.parquet", "--output",
                                                                      "q.parquet")  # fmt: skip
    assert snapshot(project) == {**before, "dup.parquet": snapshot(project)["dup.parquet"],
                                 "broken.parquet": snapshot(project)["broken.parquet"]}  # fmt: skip


def test_the_job_summary_reports_rows_scored_and_rejected_rows_per_second_and_the_version(
    project, cli, deployed, monkeypatch
):
    version, _ = deployed
    frame = customers(40)
    frame.loc[[3, 30], "tenure"] = "x"
    frame.to_csv("in.csv", index=False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(project / "summary.md"))
    monkeypatch.setenv("GITHUB_OUTPUT", str(project / "outputs.txt"))
    assert cli("score", "--input", "in.csv", "--output", "p.csv") == 0, cli.err
    summary = Path("summary.md").read_text()
    assert f"| model | `churn-classifier` version {version} |" in summary
    assert (
        "| rows scored | 38 |" in summary
        and "| rows rejected | 2 (row numbers and reasons in `p.rejects.csv`) |" in summary
    )
    assert re.search(r"\| rows/s \| [\d,]+ \(40 rows in [\d.]+ s, loading the version [\d.]+ s included\) \|", summary)
    assert "| engine | local |" in summary and "\nscored<<" in Path("outputs.txt").read_text()


# ---- the Spark engine ----


def test_spark_and_local_engines_give_the_same_predictions_and_rejects(project, loaded, spark, monkeypatch):
    model, client = loaded
    small_batches(monkeypatch, 128)
    frame, _ = hostile_frame()
    frame.to_csv("in.csv", index=False)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), "in.parquet", row_group_size=150)
    assert spark.read.csv(str(project / "in.csv"), header=True).rdd.getNumPartitions() > 2  # spread across splits
    local_engine.score_file(model, Path("in.csv"), Path("local.parquet"))
    local, local_rejects = pd.read_parquet("local.parquet"), pd.read_parquet("local.rejects.parquet")
    for source in ("in.csv", "in.parquet"):
        output = f"spark-{source.replace('.', '-')}.parquet"
        summary = spark_engine.score_dataset(model, client, source, output)
        assert (summary.engine, summary.scored, summary.rejected) == ("spark", len(local), len(local_rejects))
        scored = pd.read_parquet(output).sort_values("rid", key=lambda r: r.astype(int)).reset_index(drop=True)
        rejects = pd.read_parquet(output.replace(".parquet", ".rejects.parquet")).sort_values("row")
        assert Path(output).is_dir() and len(list(Path(output).glob("*.parquet"))) > 1  # a dataset, from partitions
        assert list(scored.columns) == list(local.columns)
        assert list(scored["rid"]) == list(local["rid"]), source
        assert list(scored["prediction"]) == list(local["prediction"]), source
        assert list(scored["probability"]) == list(local["probability"]), source  # row by row, whatever the batch
        assert set(scored["model_version"]) == set(local["model_version"])
        assert list(rejects["row"]) == list(local_rejects["row"]), source  # the same row numbers
        assert list(rejects["reject_reason"]) == list(local_rejects["reject_reason"]), source
        assert list(rejects["rid"]) == list(local_rejects["rid"]), source
        assert len(scored) + len(rejects) == len(frame)


def test_the_spark_engine_refuses_a_cell_over_the_cap_naming_its_row_and_column(project, loaded, spark):
    """The executors hold each batch to the local engine's caps (the JVM has decoded it: Spark's memory bounds that)."""
    from pipeline.core.errors import DataError

    model, client = loaded
    frame = customers(300)
    frame.loc[250, "customerID"] = "L" * (100 << 10)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), "in.parquet", row_group_size=100)
    with pytest.raises(DataError, match=r"in\.parquet: row 251, column 'customerID': a cell of 102,400 bytes"):
        spark_engine.score_dataset(model, client, "in.parquet", "out.parquet")
    assert not Path("out.parquet").exists()


def test_score_with_the_spark_engine_and_what_it_refuses(project, cli, deployed, spark, monkeypatch):
    version, _ = deployed
    frame = customers(30)
    frame.loc[7, "tenure"] = "x"
    frame.to_csv("in.csv", index=False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(project / "summary.md"))
    assert cli("score", "--engine", "spark", "--input", "in.csv", "--output", "out/p.parquet") == 0, cli.err
    assert "(spark engine)" in cli.err and "29 rows scored, 1 rejected" in cli.err
    assert len(pd.read_parquet("out/p.parquet")) == 29 and list(pd.read_parquet("out/p.rejects.parquet")["row"]) == [8]
    assert "| engine | spark |" in Path("summary.md").read_text()
    assert f"version {version}" in Path("summary.md").read_text()
    frame.loc[7, "tenure"] = "8"
    frame.to_csv("in.csv", index=False)
    assert cli("score", "--engine", "spark", "--input", "in.csv", "--output", "out/p.parquet") == 0, cli.err
    assert len(pd.read_parquet("out/p.parquet")) == 30 and not Path("out/p.rejects.parquet").exists()  # replaced

    lines = customers(30).to_csv(index=False).splitlines()
    lines[20] += ",an extra field"
    Path("bad.csv").write_text("\n".join(lines) + "\n")
    before = snapshot(project)
    assert "bad.csv is not a readable CSV" in refused(cli, "--engine", "spark", "--input", "bad.csv", "--output",
                                                      "out/p.parquet")  # fmt: skip
    assert snapshot(project) == before  # the earlier dataset as it was, no new or temp folder
    line = refused(cli, "--engine", "spark", "--input", "in.csv", "--output", "o.csv")
    assert "the spark engine writes Parquet datasets" in line
    line = refused(cli, "--engine", "spark", "--input", "in.csv", "--output", "mlflow.db")
    assert "it is the tracking store" in line
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), "in.parquet")
    line = refused(cli, "--engine", "spark", "--input", "in.parquet", "--output", "./in.parquet")
    assert line == "error: refusing to write the output in.parquet: it is the input in.parquet"


# ---- byte caps: files small on disk and huge decoded (issue 26) ----

BATCH_CAP = 32 << 20  # SCORE_MAX_BATCH_BYTES for the bombs' run: a churn batch is about 13 MiB, so it is still met
MEMORY_LIMIT = 4 << 30  # RLIMIT_AS of that run: a regression fails fast. At rest a run reserves ~2.4 GB of address
# space (threads, allocator arenas), so the bound that matters is its peak RSS, asserted below.
# Peak RSS: ~860 MiB alone, 1,105 MiB seen with three test workers on two cores (pyarrow's and malloc's retained
# memory varies with scheduling). What catches a cap regression is each bomb's refusal, naming the cap; this
# bound catches a run that holds decoded bombs (the dictionary one alone would pass RLIMIT_AS).
PEAK_RSS = 3 << 29  # 1.5 GiB


def bomb_columns(rows: int, bombs: dict[str, pa.Array]) -> pa.Table:
    """`rows` copies of the first customer, dictionary-encoded (a few bytes on disk), with `bombs` columns instead."""
    first = customers(1)
    codes = pa.array(np.zeros(rows, dtype=np.int32))
    columns = {n: bombs.get(n, pa.DictionaryArray.from_arrays(codes, pa.array([first[n][0]]))) for n in first.columns}
    return pa.table(columns)


def make_bombs() -> dict[str, str]:
    """Bomb files in the working folder: {file: the error line's expected start, after `error: FILE: `}."""
    big, medium = "B" * (8 << 20), ["M" * (60 << 10) + str(i) for i in range(4)]
    later = pa.DictionaryArray.from_arrays(  # 100,000 plain ids, then one 8 MiB id 900,000 times: 7 TB decoded
        pa.array(np.repeat(np.array([0, 1], dtype=np.int32), [100_000, 900_000])), pa.array(["7590-VHVEG", big])
    )
    pq.write_table(bomb_columns(1_000_000, {"customerID": later}), "dictionary.parquet", compression="zstd",
                   store_schema=False, write_statistics=False)  # fmt: skip
    feature = pa.DictionaryArray.from_arrays(pa.array(np.zeros(1_000_000, dtype=np.int32)), pa.array([big]))
    pq.write_table(
        bomb_columns(1_000_000, {"PaymentMethod": feature}),
        "declared.parquet",
        compression="zstd",
        write_statistics=False,
    )  # fmt: skip: the Arrow schema stored, a typed dictionary
    plain = pa.array(["x"] * 4 + ["C" * (20 << 20)] + ["x"] * 5)  # one plain cell, under the batch cap: read
    pq.write_table(bomb_columns(10, {"Contract": plain}), "plain.parquet", compression="zstd", use_dictionary=False)
    alone = pa.array(["x"] * 6 + ["P" * (64 << 20)] + ["x"] * 3)  # a page of its own, past the batch cap: unopened
    pq.write_table(bomb_columns(10, {"Contract": alone}), "page.parquet", compression="zstd", use_dictionary=False,
                   write_batch_size=1, data_page_size=1)  # fmt: skip
    cycle = pa.DictionaryArray.from_arrays(pa.array(np.arange(200_000, dtype=np.int32) % 4), pa.array(medium))
    pq.write_table(
        bomb_columns(200_000, {"gender": cycle}), "medium.parquet", compression="zstd"
    )  # cells under the cap, 12 GB decoded
    plain_medium = pa.array(medium * 500)
    pq.write_table(
        bomb_columns(2000, {"gender": plain_medium}),
        "medium-plain.parquet",
        compression="zstd",
        use_dictionary=False,
        write_batch_size=16,
    )  # fmt: skip: pages of about 1 MiB
    frame = customers(3000)
    frame.loc[2500, "Contract"] = "H" * (10 << 20)  # longer than a CSV block
    frame.loc[10, "PaymentMethod"] = 'a "quoted",\nmultiline cell'
    frame.to_csv("huge-cell.csv", index=False)
    frame = customers(3000)
    frame.loc[1234, "gender"] = "G" * (1 << 20)  # within a block
    frame.to_csv("cell.csv", index=False)
    return {
        "dictionary.parquet": "row 100,001, column 'customerID': a cell of 8,388,608 bytes, more than the 65,536",
        "declared.parquet": "row 1, column 'PaymentMethod': a cell of 8,388,608 bytes",
        "plain.parquet": "row 5, column 'Contract': a cell of 20,971,520 bytes",
        "page.parquet": "row 7, column 'Contract': a page of one cell decompresses to 67,108,",
        "medium.parquet": f"rows 1-65,536 decode to more than the {BATCH_CAP:,} bytes a batch may hold "
        "(SCORE_MAX_BATCH_BYTES), passing it at row 546; column 'gender' holds",
        "medium-plain.parquet": "rows 1-2,000 hold",
        "huge-cell.csv": "row 2,501, column 'Contract': a cell of 4,",
        "cell.csv": "row 1,235, column 'gender': a cell of 1,048,576 bytes",
    }


DRIVER = """
import json, resource, sys
from pathlib import Path
from mlflow.tracking import MlflowClient
from api.settings import Settings
from api.source import RegistrySource
from pipeline.core.errors import DataError
from pipeline.scoring import local_engine
from pipeline.stages.scoring import byte_caps
version, *paths = sys.argv[1:]
settings = Settings.probing_as_the_environment_says(  # the session's probe cache, as score reads it
    model_name="churn-classifier", model_version=version, max_batch_size=local_engine.CHUNK_ROWS
)
model = RegistrySource(settings, client=MlflowClient()).load(version)
said = {}
for path in paths:
    try:
        local_engine.score_file(model, Path(path), Path("out/p.csv"), caps=byte_caps())
        said[path] = "scored"
    except DataError as exc:
        said[path] = str(exc)
said["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # bytes: this process's highest RSS
print(json.dumps(said))
"""


def test_bombs_small_on_disk_and_huge_decoded_exit_2_naming_column_and_row_within_bounded_memory(
    project, cli, deployed, monkeypatch
):
    """Every bomb scored by one process (the version loaded once) under a memory limit, then one through the CLI."""
    version, _ = deployed
    expected = make_bombs()
    assert all(Path(f).stat().st_size < 300_000 for f in expected if f.endswith(".parquet")), "bombs, not big files"
    monkeypatch.setenv("SCORE_MAX_BATCH_BYTES", str(BATCH_CAP))
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", DRIVER, version, *expected],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)),
    )
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-2000:]
    said = json.loads(out)
    peak = said.pop("peak")
    for path, start in expected.items():
        assert said[path].startswith(f"{path}: {start}") and said[path].endswith("; nothing written"), said[path]
    assert peak < PEAK_RSS, f"peak RSS {peak / 2**20:.0f} MiB"
    assert time.monotonic() - started < 120
    assert not Path("out").exists()  # no output, no rejects, no temp file, not even the folder
    line = refused(cli, "--input", "dictionary.parquet", "--output", "out/p.csv")  # exit 2
    cap = "a cell may hold (SCORE_MAX_CELL_BYTES); nothing written"
    assert line == f"error: dictionary.parquet: {expected['dictionary.parquet']} {cap}"


KILLED_RUN = """
import sys
from pipeline.scoring import local_engine
local_engine.CHUNK_ROWS = 2  # thousands of batches: the run is still writing when it is killed
from pipeline.cli import main
sys.exit(main(["score", "--input", "in.csv", "--output", "out/p.csv"]))
"""


def test_a_killed_runs_temp_files_are_removed_by_the_next_run(project, cli, deployed):
    frame = customers(3000)
    frame.loc[5, "tenure"] = "abc"  # a rejects file is being written too
    frame.to_csv("in.csv", index=False)
    Path("out").mkdir()
    Path("out/p.csv").write_text("an earlier run's predictions\n")
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(Path("out").glob(".p.rejects.csv.*.tmp")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, run.stderr.read().decode()[-2000:]
    left = sorted(p.name for p in Path("out").glob(".*.tmp"))
    assert len(left) == 2 and all(name.startswith(f".p.{'rejects.' if 'rejects' in name else ''}csv.{run.pid}.")
                                  for name in left), left  # fmt: skip
    assert Path("out/p.csv").read_text() == "an earlier run's predictions\n"  # untouched by the killed run

    assert cli("score", "--input", "in.csv", "--output", "out/p.csv") == 0, cli.err
    assert sorted(p.name for p in Path("out").iterdir()) == ["p.csv", "p.rejects.csv"]  # the killed run's are gone
    assert len(pd.read_csv("out/p.csv")) == 2999
