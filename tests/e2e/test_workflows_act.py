"""The real workflow files, run by act on this host, against a real `mlflow server`.

Each push builds the real API image (docker or podman) and smoke-tests a real
container. The registry is read afterwards: act's exit code alone proves little.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.registry import history
from pipeline.serving import tracking_server

from ..conftest import ROOT

pytestmark = pytest.mark.e2e
MODEL = "churn-classifier"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project's files (tracked and new, not ignored) in a fresh git repository on branch main."""
    path = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    git(path, "init", "-q", "-b", "main")
    commit(path, "snapshot of the project")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tracking_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def git(repo: Path, *args: str) -> None:
    who = {"GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@localhost"}
    env = {**os.environ, **who, "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@localhost"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def act(repo: Path, server: str, *args: str) -> str:
    """Plain `act` with the repository's .actrc and the venv's python first on PATH; returns its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("MLFLOW_TRACKING_URI", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ENV", "GITHUB_ACTIONS"):
        env.pop(name, None)
    result = subprocess.run(
        ["act", *args, "-s", f"MLFLOW_TRACKING_URI={server}"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    (repo.parent / f"act-{len(list(repo.parent.glob('act-*.log')))}.log").write_text(output)
    act.returncode = result.returncode
    return output


def registry(server: str) -> tuple[dict, list]:
    client = MlflowClient(server)
    aliases = {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    return aliases, versions


def test_push_gate_failure_and_rollback_through_act(repo, server):
    # given version 1 in production, deployed with the plain CLI (smoke against uvicorn)
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    for command in (["make-data"], ["run"]):
        done = subprocess.run([sys.executable, "-m", "pipeline", *command], cwd=repo, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert registry(server)[0] == {"candidate": "1", "production": "1"}

    # when a push passes, the deploy workflow moves production to version 2, smoke-tested as an image
    output = act(repo, server, "push")
    assert act.returncode == 0, output[-3000:]
    aliases, versions = registry(server)
    assert aliases == {"candidate": "2", "production": "2"}
    assert versions[1].tags["gate"] == "passed" and versions[1].tags["smoke"] == "passed"
    assert versions[1].tags["smoke.target"].startswith("image churn-api:")
    assert versions[1].tags["git_sha"] == git_head(repo)

    # when a push sets gates.f1_min impossibly high, it fails at the gate and changes nothing
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("f1_min: 0.55", "f1_min: 0.99"))
    commit(repo, "raise the F1 bar out of reach")
    output = act(repo, server, "push")
    assert act.returncode != 0 and "gate failed" in output
    assert registry(server)[0] == aliases and len(registry(server)[1]) == 2

    # a rollback dispatch without a reason is refused by the command itself
    output = act(repo, server, "workflow_dispatch", "-W", ".github/workflows/rollback.yml")
    assert act.returncode != 0 and "--reason" in output
    assert registry(server)[0]["production"] == "2"

    # a rollback dispatch moves production back and records why
    reason = "e2e: bad latency after v2"
    output = act(
        repo, server, "workflow_dispatch", "-W", ".github/workflows/rollback.yml", "--input", f"reason={reason}"
    )
    assert act.returncode == 0, output[-3000:]
    assert registry(server)[0] == {"candidate": "2", "production": "1"}
    last = history(MlflowClient(server), MODEL)[-1]
    assert (last["alias"], last["from"], last["to"]) == ("production", "2", "1")
    assert last["reason"] == f"rollback: {reason}"


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def test_smoke_of_a_missing_image_fails_loudly_and_blocks_promotion(server, cli, project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    sets = ["--set", "registry.model_name=image-missing"]
    assert cli("train", *sets) == 0, cli.err
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id, *sets) == 0 and cli("register", "--run-id", run_id, *sets) == 0
    version = cli.out.strip()
    assert cli("smoke", "--version", version, "--image", "churn-api:does-not-exist", *sets) == 1
    assert "churn-api:does-not-exist not found" in cli.err
    assert cli("promote", "--version", version, *sets) == 1
    [state] = cli.status_of("image-missing")["versions"]
    assert state["smoke"] == "failed" and state["aliases"] == ["candidate"]
