"""Registries with released versions, deployed once per session and copied into a test's project.

A deploy (train, gate, register, smoke, promote) costs seconds; copying the
store it left does not. `Releases.restore(project, versions=2)` gives a test
what `deploy(cli)` twice would have given it: versions 1 and 2 released the same
way (the same `deploy` of test_flow, every stage asserted), production on 2.
The copy is the test's own (mlflow.db, the artifacts, reports/, keys/), with
every file URI in the database pointing into the test's folder, so a test may
corrupt, move and tag whatever it likes.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sqlite3
from pathlib import Path

import pytest

from pipeline.cli import main

from ..conftest import ROOT
from .test_flow import deploy

# What a project folder has that a snapshot need not carry: the project fixture made them (the same files).
PROJECT_FILES = ("params.yaml", "data")
SIGNING_KEY = "keys/release.key"  # in a signed snapshot, relative to the folder


class QuietCli:
    """`python -m pipeline` in-process, keeping what it printed (the `cli` fixture needs a test's capsys)."""

    out = err = ""

    def __call__(self, *args: str) -> int:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        self.out, self.err = out.getvalue(), err.getvalue()
        return code


def rewrite_uris(database: Path, old: Path, new: Path) -> None:
    """Every file URI under `old` stored in the sqlite `database` now points under `new`."""
    before, after = f"{old.as_uri()}/", f"{new.as_uri()}/"
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (before, after, before),
                )
        for table in tables:  # nothing may still point into the source folder
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                left = db.execute(
                    f'SELECT count(*) FROM "{table}" WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (before,),
                ).fetchone()[0]
                assert left == 0, f"{table}.{column} still names {old}"


def copy_store(source: Path, target: Path) -> None:
    """`source`'s registry and what deploying left (artifacts, reports, keys) into `target`, URIs rewritten."""
    for item in source.iterdir():
        if item.name in PROJECT_FILES:
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)
    rewrite_uris(target / "mlflow.db", source, target)


class Releases:
    """Snapshots of two deploy chains, made on first use: plain releases, and releases signed by a key of their own."""

    def __init__(self, root: Path, churn_csv: Path, empty_mlflow_db: Path) -> None:
        self.root, self.churn_csv, self.empty_mlflow_db = root, churn_csv, empty_mlflow_db
        self.deployed: dict[bool, int] = {}  # signed -> versions released so far in that chain

    def snapshot(self, versions: int, signed: bool = False) -> Path:
        """The folder of a registry with versions 1..`versions` released (production on the last)."""
        kind = "signed" if signed else "plain"
        chain = self.root / f"{kind}-chain"
        if signed not in self.deployed:
            self._start(chain, signed)
        while self.deployed[signed] < versions:
            self._deploy(chain, signed)
            done = self.deployed[signed] = self.deployed[signed] + 1
            snapshot = self.root / f"{kind}-{done}"
            snapshot.mkdir()
            copy_store(chain, snapshot)
        return self.root / f"{kind}-{versions}"

    def restore(self, project: Path, versions: int, signed: bool = False) -> None:
        """Make `project`'s registry (the `project` fixture's folder) hold `versions` released versions.

        Signed: project/keys holds the key pair that signed them (RELEASE_SIGNING_KEY is the test's to set).
        """
        copy_store(self.snapshot(versions, signed), project)

    def _start(self, chain: Path, signed: bool) -> None:
        chain.mkdir()
        shutil.copy(ROOT / "params.yaml", chain / "params.yaml")
        (chain / "data").mkdir()
        shutil.copy(self.churn_csv, chain / "data" / "churn.csv")
        shutil.copy(self.empty_mlflow_db, chain / "mlflow.db")
        self.deployed[signed] = 0
        if signed:
            cli = QuietCli()
            assert cli("keygen", "--out", str(chain / "keys")) == 0, cli.err

    def _deploy(self, chain: Path, signed: bool) -> None:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(chain)
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{chain / 'mlflow.db'}")
            for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_SHA", "GITHUB_ACTOR", "RELEASE_VERIFY_KEY"):
                mp.delenv(name, raising=False)
            if signed:
                # the key itself, as a CI secret holds it (the tests name it by its path, the other form)
                mp.setenv("RELEASE_SIGNING_KEY", (chain / SIGNING_KEY).read_text())
            else:
                mp.delenv("RELEASE_SIGNING_KEY", raising=False)
            cli = QuietCli()
            assert deploy(cli) == str(self.deployed[signed] + 1), cli.err
