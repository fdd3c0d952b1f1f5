"""A registry with a smoke-tested candidate waiting for promotion, made once per run and copied into a test's project.

`restore_smoked_candidate(releases, project)` gives a test what
`releases.restore(project, 2)`, then train, gate, register and smoke would:
versions 1 and 2 released (production on 2), and version 3 gated against
production 2, registered (@candidate) and smoke-tested, not promoted. Built
the way a test would build it (the `register_candidate` of test_flow, then
`smoke`), under a file lock in the folder of the `releases` snapshots, so the
workers of a run build it once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking._tracking_service import utils as tracking_utils

from ..conftest import ROOT

NAME = "plain-2+smoked-3"


def restore_smoked_candidate(releases, project: Path) -> None:
    """Make `project`'s registry (the `project` fixture's folder) hold 1 and 2 released and 3 a smoked candidate."""
    from .released import copy_store, naming  # here: released imports test_flow, which imports this module

    copy_store(_snapshot(releases), project)
    assert not naming(project / "mlflow.db", releases.root), "the copy would share files with the snapshots"


def _snapshot(releases) -> Path:
    from .released import QuietCli, copy_store, locked
    from .test_flow import register_candidate

    root: Path = releases.root
    snapshot = root / NAME
    with locked(root / f"{NAME}.lock"):
        if snapshot.exists():
            return snapshot
        work = Path(tempfile.mkdtemp(prefix=f"{NAME}-"))  # outside the snapshots: restore checks nothing points there
        shutil.copy(ROOT / "params.yaml", work / "params.yaml")
        (work / "data").mkdir()
        shutil.copy(releases.churn_csv, work / "data" / "churn.csv")
        shutil.copy(releases.empty_mlflow_db, work / "mlflow.db")
        releases.restore(work, versions=2)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(work)
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
            for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_SHA", "GITHUB_ACTOR", "RELEASE_VERIFY_KEY",
                         "RELEASE_SIGNING_KEY"):  # fmt: skip
                mp.delenv(name, raising=False)
            cli = QuietCli()
            register_candidate(cli)
            assert cli("smoke", "--version", "3") == 0, cli.err
        partial = root / f"{NAME}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        copy_store(work, partial, lands_in=snapshot)
        partial.rename(snapshot)  # complete, or not there at all
        shutil.rmtree(work)
        # MLflow keeps each run's artifact repository by run id for the process: this one's would still point into
        # `work`, so a test of this process logging to run 3 of its copy would write there, not into its project.
        tracking_utils._artifact_repos_cache.clear()
    return snapshot
