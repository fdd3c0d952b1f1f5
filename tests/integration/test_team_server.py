"""The flow and the API against `mlflow server` as teams run it.

MLflow's basic-auth app, a real PostgreSQL for the backend store and the
users, and artifacts in S3 (moto's server mode standing in for S3 or MinIO),
proxied by the tracking server. Credentials come from MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD, as in the workflows.
"""

import glob
import itertools
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from pipeline.core.params_file import load_params
from pipeline.runtime.api_process import uvicorn_process
from pipeline.runtime.processes import free_port, stop, wait_for
from pipeline.runtime.tracking_server import start_tracking_server
from pipeline.stages.release import rollback_stage

from .test_api_live import wait_ready

pytestmark = pytest.mark.integration
BUCKET = "mlflow-artifacts"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "team-test", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16)}


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
    """A throwaway PostgreSQL cluster on a free loopback port; yields the URI of a database by name."""
    bin_dir, port = _pg_bin(), free_port()
    # initdb refuses root, and pytest's tmp folders are private to root: a folder postgres can enter.
    data = Path(tempfile.mkdtemp(prefix="pgdata-"))
    shutil.chown(data, "postgres", "postgres")
    _as_postgres(f"{bin_dir}/initdb -D {data} -U postgres --auth=trust")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    _as_postgres(f"{bin_dir}/pg_ctl -D {data} -l {data}/server.log -o '{options}' -w start")
    try:
        for database in ("mlflow", "mlflow_auth"):  # the tracking store, and MLflow's users and permissions
            _as_postgres(f"{bin_dir}/createdb -h 127.0.0.1 -p {port} -U postgres {database}")
        yield lambda database: f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
    finally:
        _as_postgres(f"{bin_dir}/pg_ctl -D {data} -m fast -w stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3-compatible server on loopback, with the artifacts bucket; yields its endpoint URL."""
    import boto3

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(endpoint + "/moto-api/", 60, process)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_aws_keys()).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        stop(process)
        log.close()


def _aws_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    }


class TeamServer:
    """`mlflow server --app-name basic-auth` on PostgreSQL with S3 artifacts; can be stopped and started again."""

    def __init__(self, directory: Path, postgres, s3: str):
        self.directory, self.port, self.s3 = directory, free_port(), s3
        self.backend = postgres("mlflow")
        self.admin = ("admin", secrets.token_urlsafe(16))
        config = directory / "auth.ini"
        config.write_text(
            f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {postgres('mlflow_auth')}\n"
            f"admin_username = {self.admin[0]}\nadmin_password = {self.admin[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Without the cache every request re-hashes the password (PBKDF2): too slow for a release storm.
            "auth_cache_ttl_seconds = 60\n"
        )
        self.env = {
            **S3_KEYS,
            "MLFLOW_S3_ENDPOINT_URL": s3,
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
        self.process = None

    def start(self) -> str:
        self.url, self.process = start_tracking_server(
            self.directory, self.port, self.backend, f"s3://{BUCKET}/artifacts", "basic-auth", self.env
        )
        return self.url

    def stop(self) -> None:
        stop(self.process)


@pytest.fixture
def team_server(tmp_path_factory, postgres, s3, monkeypatch):
    server = TeamServer(tmp_path_factory.mktemp("team-server"), postgres, s3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.start())
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin[1])
    yield server
    server.stop()


def ledger_breaks(history: list[dict], alias: str) -> list[dict]:
    """Moves of `alias` that do not start where the previous one ended."""
    moves = [m for m in history if m["alias"] == alias]
    return [b for a, b in itertools.pairwise(moves) if b["from"] != a["to"]]


def test_flow_api_and_concurrent_moves_on_a_team_server(project, cli, team_server, monkeypatch):
    import boto3
    from mlflow.server.auth.client import AuthServiceClient

    assert cli("run") == 0, cli.err
    assert cli("run") == 0, cli.err
    assert cli("rollback", "--reason", "team check") == 0, cli.err
    state = cli.status()
    assert state["aliases"] == {"candidate": "2", "production": "1"}
    assert [v["smoke"] for v in state["versions"]] == ["passed", "passed"]
    assert state["history"][-1]["reason"] == "rollback: team check"

    # the artifacts went through the server to S3: the models are in the bucket, nothing on the server's disk
    bucket = boto3.client("s3", endpoint_url=team_server.s3, region_name="us-east-1", **_aws_keys())
    keys = [
        o["Key"] for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in page["Contents"]
    ]
    for name in ("MLmodel", "model.skops", "feature_schema.json", "gate/gate.json"):
        assert sum(key.endswith("/" + name) for key in keys) >= 2, (name, keys[:20])
    assert not (team_server.directory / "artifacts").exists()

    # the API serves production from the team server, with the same credentials
    with uvicorn_process({"MODEL_NAME": "churn-classifier"}) as url:
        wait_ready(url)
        record = _example_record(state["versions"][0]["run_id"])
        answer = httpx.post(url + "/predict", json={"records": [record]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1", answer.text

    # ten rollbacks at once, half to 2 and half to 1: one unbroken ledger chain
    params = load_params("params.yaml")
    with ThreadPoolExecutor(max_workers=10) as pool:
        moves = [pool.submit(rollback_stage, params, f"storm {i}", "2" if i % 2 else "1") for i in range(10)]
        results = [m.result() for m in moves]
    assert sorted(set(results)) == ["1", "2"]
    state = cli.status()
    assert ledger_breaks(state["history"], "production") == []
    assert state["history"][-1]["to"] == state["aliases"]["production"]
    assert state["anomalies"] == []
    assert cli("status") == 0 and "release-lock" not in cli.out

    # credentials: missing, wrong, or a user who may read but not move aliases: one line each, nothing moves
    viewer = ("viewer", "viewer-" + secrets.token_hex(8))
    AuthServiceClient(team_server.url).create_user(*viewer)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert cli("status") == 3
    assert _error(cli.err) == (
        "error: tracking server requires credentials (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    assert cli("rollback", "--reason", "wrong password") == 3
    assert "rejected the credentials of user 'admin' (401): wrong password" in _error(cli.err)
    assert "not-the-password" not in cli.err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", viewer[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", viewer[1])
    assert cli("status") == 0  # READ is the default permission
    other = "2" if state["aliases"]["production"] == "1" else "1"
    assert cli("rollback", "--to", other, "--reason", "a viewer tries") == 3
    assert "denied user 'viewer' the permission for this request (403)" in _error(cli.err)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", team_server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", team_server.admin[1])
    assert cli.status()["aliases"] == state["aliases"]

    # the server dies: every command says so in one line, exit 3, nothing moves
    team_server.stop()
    assert cli("status") == 3 and "is not reachable" in cli.err and "Traceback" not in cli.err
    assert cli("promote", "--version", "2") == 3
    assert cli("rollback", "--reason", "server down") == 3
    # and comes back on the same stores: everything is where it was
    team_server.start()
    assert cli.status()["aliases"] == state["aliases"]


def _error(stderr: str) -> str:
    """The one error line of a failed command (progress lines come before it)."""
    [line] = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def _example_record(run_id: str) -> dict:
    import json

    from mlflow.tracking import MlflowClient

    with open(MlflowClient().download_artifacts(run_id, "smoke/examples.json")) as f:
        return json.load(f)["records"][0]


def test_a_tracking_server_that_is_down_is_named(project, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert cli("status") == 3
    assert "is not reachable" in cli.err
    assert cli("run") == 3
    assert "is not reachable" in cli.err
