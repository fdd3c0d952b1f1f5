"""The whole flow against a real `mlflow server` whose backend store is a real PostgreSQL."""

import glob
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pipeline.serving import free_port, tracking_server

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


def test_flow_and_rollback_on_a_postgres_backed_server(project, cli, postgres, tmp_path_factory, monkeypatch):
    with tracking_server(tmp_path_factory.mktemp("server"), backend_store_uri=postgres) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        assert cli("run") == 0, cli.err
        assert cli("run") == 0, cli.err
        assert cli("rollback", "--reason", "postgres check") == 0, cli.err
        state = cli.status()
    assert state["aliases"] == {"candidate": "2", "production": "1"}
    assert [v["smoke"] for v in state["versions"]] == ["passed", "passed"]
    assert state["history"][-1]["reason"] == "rollback: postgres check"
    json.dumps(state)  # the contract's status --json is plain JSON


def test_a_tracking_server_that_is_down_is_named(project, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert cli("status") == 2
    assert "is not reachable" in cli.err
    assert cli("run") == 2
    assert "is not reachable" in cli.err
