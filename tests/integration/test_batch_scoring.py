"""`pipeline score`: a CSV scored by a released version, bad rows set aside with their reasons."""

import contextlib
import errno
import hashlib
import io
import os
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.core.data import coerce_to_schema
from pipeline.core.formula_cells import neutralise
from pipeline.runtime import batch_scoring
from pipeline.store.tracking import load_feature_schema

from ..conftest import ROOT
from .test_flow import deploy

pytestmark = pytest.mark.integration


def test_score_writes_predictions_with_the_version_and_rejects_bad_rows_with_the_reason(project, cli):
    version = deploy(cli)
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
    expected = mlflow.pyfunc.load_model(f"models:/churn-classifier/{version}").predict(X)
    assert list(scored["prediction"]) == list(expected) and list(scored["customerID"]) == list(good["customerID"])


def test_score_refuses_what_it_cannot_do_with_a_clear_exit_code(project, cli):
    deploy(cli)
    pd.read_csv("data/churn.csv").head(5).drop(columns=["tenure"]).to_csv("no-tenure.csv", index=False)
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv") == 2 and "'tenure' missing" in cli.err
    assert cli("score", "--input", "nope.csv", "--output", "o.csv") == 2 and "does not exist" in cli.err
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv", "--version", "9") == 1
    assert "has no version 9" in cli.err
    assert cli("score", "--input", "no-tenure.csv", "--output", "o.csv", "--alias", "staging") == 2
    assert "no alias @staging" in cli.err


# ---- score never destroys a user's file ----


class QuietCli:
    """`python -m pipeline` in-process for a module fixture (capsys is per test)."""

    def __call__(self, *args: str) -> int:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        self.out, self.err = out.getvalue(), err.getvalue()
        return code


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


def customers(rows: int = 60) -> pd.DataFrame:
    return pd.read_csv("data/churn.csv", dtype=str, keep_default_na=False).head(rows).drop(columns=["Churn"])


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
    monkeypatch.setattr(batch_scoring, "CHUNK_ROWS", 10)
    frame = customers()
    frame.to_csv("in.csv", index=False)
    assert cli("score", "--input", "in.csv", "--output", "out/p.csv") == 0, cli.err  # an earlier run
    frame.loc[3, "tenure"] = "abc"  # a reject in chunk 1: the rejects file is being written too
    lines = frame.to_csv(index=False).splitlines()
    lines[45] += ",an extra field"  # chunk 5 cannot be read
    Path("in.csv").write_text("\n".join(lines) + "\n")
    before = snapshot(project)
    assert "in.csv is not a readable CSV" in refused(cli, "--input", "in.csv", "--output", "out/p.csv")
    assert "40/60 rows" in cli.err  # four chunks were scored before it failed
    assert snapshot(project) == before  # the earlier predictions, no rejects file, no temp file
    assert "in.csv is not a readable CSV" in refused(cli, "--input", "in.csv", "--output", "new/deeper/p.csv")
    assert snapshot(project) == before  # not even the folders


def test_the_scoring_function_takes_a_chunk_size_and_fails_cleanly_in_a_later_chunk(project, deployed):
    from api.settings import Settings
    from api.source import RegistrySource
    from pipeline.core.errors import DataError

    version, _ = deployed
    settings = Settings(model_name="churn-classifier", model_alias="production", max_batch_size=10)
    model = RegistrySource(settings, client=mlflow.MlflowClient(), verify_key=None).load(version)
    frame = customers(30)
    frame.loc[[5, 25], "gender"] = ""
    frame.to_csv("in.csv", index=False)
    summary = batch_scoring.score_csv(model, Path("in.csv"), Path("p.csv"), chunk_rows=10)
    assert (summary.scored, summary.rejected) == (28, 2)
    assert list(pd.read_csv("p.rejects.csv")["row"]) == [6, 26]
    lines = frame.to_csv(index=False).splitlines()
    lines[22] += ",x"  # a row of chunk 3
    Path("in.csv").write_text("\n".join(lines) + "\n")
    before = snapshot(project)
    with pytest.raises(DataError, match="not a readable CSV"):
        batch_scoring.score_csv(model, Path("in.csv"), Path("p.csv"), chunk_rows=10)
    assert snapshot(project) == before


def test_a_write_failure_part_way_leaves_the_earlier_output_and_no_stray_file(project, cli, deployed, monkeypatch):
    """A full disk in the second chunk, simulated: the writer (DataFrame.to_csv) raises ENOSPC.

    Chosen over a read-only folder because the tests run as root, which ignores permissions;
    tests/unit/test_output_files.py makes a real write fail with RLIMIT_FSIZE.
    """
    monkeypatch.setattr(batch_scoring, "CHUNK_ROWS", 10)
    frame = customers()
    frame.loc[2, "tenure"] = "abc"  # so a rejects file is written too
    frame.to_csv("in.csv", index=False)
    assert cli("score", "--input", "in.csv", "--output", "p.csv") == 0, cli.err
    before = snapshot(project)
    assert {"p.csv", "p.rejects.csv"} <= set(before)
    real, calls = pd.DataFrame.to_csv, []

    def to_csv(self, target, *args, **kwargs):
        calls.append(target.name)
        if len(calls) == 3:  # predictions and rejects of chunk 1 written, then the predictions of chunk 2
            raise OSError(errno.ENOSPC, "No space left on device", target.name)
        return real(self, target, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    assert cli("score", "--input", "in.csv", "--output", "p.csv") == 3
    monkeypatch.undo()
    assert "error: storage is full: cannot write" in cli.err and "p.csv" in calls[2]
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
