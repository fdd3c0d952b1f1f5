"""The whole flow against a real `mlflow server` whose backend store is a real PostgreSQL."""

import glob
import itertools
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.config import load_params
from pipeline.processes import free_port, stop
from pipeline.stages import rollback_stage
from pipeline.tracking_server import start_tracking_server

pytestmark = pytest.mark.integration


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed (make system-deps installs it with apt)")
    return Path(found[-1]).parent


def _as_postgres(command: str) -> None:
    result = subprocess.run(["su", "postgres", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URI."""
    bin_dir, port = _pg_bin(), free_port()
    # initdb refuses root, and pytest's tmp folders are private to root: a folder postgres can enter.
    data = Path(tempfile.mkdtemp(prefix="pgdata-"))
    shutil.chown(data, "postgres", "postgres")
    _as_postgres(f"{bin_dir}/initdb -D {data} -U postgres --auth=trust")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    _as_postgres(f"{bin_dir}/pg_ctl -D {data} -l {data}/server.log -o '{options}' -w start")
    try:
        _as_postgres(f"{bin_dir}/createdb -h 127.0.0.1 -p {port} -U postgres mlflow")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        _as_postgres(f"{bin_dir}/pg_ctl -D {data} -m fast -w stop")
        shutil.rmtree(data, ignore_errors=True)


def ledger_breaks(history: list[dict], alias: str) -> list[dict]:
    """Moves of `alias` that do not start where the previous one ended."""
    moves = [m for m in history if m["alias"] == alias]
    return [b for a, b in itertools.pairwise(moves) if b["from"] != a["to"]]


def test_flow_concurrent_moves_and_a_restart_on_a_postgres_backed_server(
    project, cli, postgres, tmp_path_factory, monkeypatch
):
    directory, port = tmp_path_factory.mktemp("server"), free_port()
    url, server = start_tracking_server(directory, port, backend_store_uri=postgres)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        assert cli("run") == 0, cli.err
        assert cli("run") == 0, cli.err
        assert cli("rollback", "--reason", "postgres check") == 0, cli.err
        state = cli.status()
        assert state["aliases"] == {"candidate": "2", "production": "1"}
        assert [v["smoke"] for v in state["versions"]] == ["passed", "passed"]
        assert state["history"][-1]["reason"] == "rollback: postgres check"

        # twenty rollbacks at once, half to 2 and half to 1: one unbroken ledger chain
        params = load_params("params.yaml")
        with ThreadPoolExecutor(max_workers=20) as pool:
            moves = [pool.submit(rollback_stage, params, f"storm {i}", "2" if i % 2 else "1") for i in range(20)]
            results = [m.result() for m in moves]
        assert sorted(set(results)) == ["1", "2"]
        state = cli.status()
        assert ledger_breaks(state["history"], "production") == []
        assert state["history"][-1]["to"] == state["aliases"]["production"]
        assert state["anomalies"] == []
        assert cli("status") == 0 and "release-lock" not in cli.out

        # the server dies: every command says so in one line, exit 3, nothing moves
        stop(server)
        assert cli("status") == 3 and "is not reachable" in cli.err and "Traceback" not in cli.err
        assert cli("promote", "--version", "2") == 3
        assert cli("rollback", "--reason", "server down") == 3
        # and comes back on the same store: everything is where it was
        url, server = start_tracking_server(directory, port, backend_store_uri=postgres)
        assert cli.status()["aliases"] == state["aliases"]
    finally:
        stop(server)


def test_a_tracking_server_that_is_down_is_named(project, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert cli("status") == 3
    assert "is not reachable" in cli.err
    assert cli("run") == 3
    assert "is not reachable" in cli.err
