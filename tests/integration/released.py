"""Registries with released versions, deployed once per session and copied into a test's project.

A deploy (train, gate, register, smoke, promote) costs seconds; copying the
store it left does not. `Releases.restore(project, versions=2)` gives a test
what `deploy(cli)` twice would have given it: versions 1 and 2 released the same
way (the same `deploy` of test_flow, every stage asserted), production on 2.
The copy is the test's own (mlflow.db, the artifacts, reports/, keys/), with
every file URI in the database pointing into the test's folder, so a test may
corrupt, move and tag whatever it likes.

Under pytest-xdist the workers of a run share the snapshots (a folder of the
run, a file lock per chain): whichever worker first needs version N deploys it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import shutil
import sqlite3
from collections.abc import Iterator
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
    assert not naming(database, old), f"{database} still names {old}: {naming(database, old)}"


def naming(database: Path, folder: Path) -> list[str]:
    """The columns of the sqlite `database` holding a file URI under `folder`."""
    prefix = f"{folder.as_uri()}/"
    found = []
    with contextlib.closing(sqlite3.connect(database)) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                query = (
                    f'SELECT count(*) FROM "{table}" WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0'
                )
                if db.execute(query, (prefix,)).fetchone()[0]:
                    found.append(f"{table}.{column}")
    return found


def copy_store(source: Path, target: Path, lands_in: Path | None = None) -> None:
    """`source`'s registry and what deploying left (artifacts, reports, keys) into `target`, URIs rewritten.

    The URIs point into `lands_in` instead when the copy is renamed to that afterwards.
    """
    for item in source.iterdir():
        if item.name in PROJECT_FILES:
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)
    rewrite_uris(target / "mlflow.db", source, lands_in or target)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) held by this process until the block ends."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Releases:
    """Snapshots of two deploy chains, made on first use: plain releases, and releases signed by a key of their own."""

    def __init__(self, root: Path, churn_csv: Path, empty_mlflow_db: Path) -> None:
        self.root, self.churn_csv, self.empty_mlflow_db = root, churn_csv, empty_mlflow_db
        root.mkdir(parents=True, exist_ok=True)

    def snapshot(self, versions: int, signed: bool = False) -> Path:
        """The folder of a registry with versions 1..`versions` released (production on the last)."""
        kind = "signed" if signed else "plain"
        chain = self.root / f"{kind}-chain"
        with locked(self.root / f"{kind}.lock"):  # one deployer per chain, whichever process asks first
            if not chain.exists():
                self._start(chain, signed)
            done = 0
            while (self.root / f"{kind}-{done + 1}").exists():
                done += 1
            while done < versions:
                self._deploy(chain, signed, done + 1)
                done += 1
                snapshot, partial = self.root / f"{kind}-{done}", self.root / f"{kind}-{done}.partial"
                partial.mkdir()
                copy_store(chain, partial, lands_in=snapshot)
                partial.rename(snapshot)  # complete, or not there at all
        return self.root / f"{kind}-{versions}"

    def restore(self, project: Path, versions: int, signed: bool = False) -> None:
        """Make `project`'s registry (the `project` fixture's folder) hold `versions` released versions.

        Signed: project/keys holds the key pair that signed them (RELEASE_SIGNING_KEY is the test's to set).
        """
        copy_store(self.snapshot(versions, signed), project)
        assert not naming(project / "mlflow.db", self.root), "the copy would share files with the snapshots"

    def _start(self, chain: Path, signed: bool) -> None:
        chain.mkdir()
        shutil.copy(ROOT / "params.yaml", chain / "params.yaml")
        (chain / "data").mkdir()
        shutil.copy(self.churn_csv, chain / "data" / "churn.csv")
        shutil.copy(self.empty_mlflow_db, chain / "mlflow.db")
        if signed:
            cli = QuietCli()
            assert cli("keygen", "--out", str(chain / "keys")) == 0, cli.err

    def _deploy(self, chain: Path, signed: bool, version: int) -> None:
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
            assert deploy(cli) == str(version), cli.err
