"""The real workflow files, run by act on this host, against a real `mlflow server`.

Each push builds the real API image (docker or podman) and smoke-tests a real
container. The registry is read afterwards: act's exit code alone proves little.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from pipeline.runtime.container import LOCAL_BASE
from pipeline.runtime.processes import free_port, stop, wait_for
from pipeline.runtime.tracking_server import tracking_server
from pipeline.store.registry import history

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


@pytest.fixture(scope="module")
def image_registry(tmp_path_factory) -> str:
    """A real OCI registry (the distribution registry Debian packages as docker-registry) on loopback."""
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry is not installed (make system-deps installs it with apt)")
    root, port = tmp_path_factory.mktemp("oci-registry"), free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n"
    )
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/v2/", 30, process)
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def manifest(registry_host: str, name: str, reference: str) -> tuple[str, dict]:
    """(Docker-Content-Digest, manifest) as the registry serves them."""
    url = f"http://{registry_host}/v2/{name}/manifests/{reference}"
    answer = httpx.get(url, headers={"Accept": MANIFEST_TYPES}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.headers["Docker-Content-Digest"], answer.json()


def git(repo: Path, *args: str) -> None:
    who = {"GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@localhost"}
    env = {**os.environ, **who, "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@localhost"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    """A release key pair made by `pipeline keygen`; act passes the files' paths as secret and variable."""
    out = tmp_path_factory.mktemp("keys")
    subprocess.run([sys.executable, "-m", "pipeline", "keygen", "--out", str(out)], cwd=ROOT, check=True)
    return out / "release.key", out / "release.pub"


def act(repo: Path, server: str, *args: str, keys: tuple[Path, Path] | None = None) -> str:
    """Plain `act` with the repository's .actrc and the venv's python first on PATH; returns its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("MLFLOW_TRACKING_URI", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_ENV", "GITHUB_ACTIONS"):
        env.pop(name, None)
    signing = ["-s", f"RELEASE_SIGNING_KEY={keys[0]}", "--var", f"RELEASE_VERIFY_KEY={keys[1]}"] if keys else []
    result = subprocess.run(
        ["act", *args, "-s", f"MLFLOW_TRACKING_URI={server}", *signing],
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


def test_push_pr_gate_failure_and_rollback_through_act(repo, server, keys, image_registry, cli, monkeypatch):
    # given version 1 in production, deployed with the plain CLI (smoke against uvicorn), signed
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "RELEASE_SIGNING_KEY": str(keys[0])}
    for command in (["make-data"], ["run"]):
        done = subprocess.run([sys.executable, "-m", "pipeline", *command], cwd=repo, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert registry(server)[0] == {"candidate": "1", "production": "1"}

    # when a push passes, the deploy workflow moves production to version 2, smoke-tested as an image
    repository = f"{image_registry}/churn-api"
    output = act(repo, server, "push", "--var", f"IMAGE_REPOSITORY={repository}", keys=keys)
    assert act.returncode == 0, output[-3000:]
    aliases, versions = registry(server)
    assert aliases == {"candidate": "2", "production": "2"}
    tags = versions[1].tags
    assert tags["gate"] == "passed" and tags["smoke"] == "passed"
    assert tags["smoke.target"].startswith("image churn-api:")
    sha = git_head(repo)
    assert tags["git_sha"] == sha
    # the verdicts are bound to the artifact and the image, and signed
    assert tags["smoke.artifact_digest"] == tags["artifact.digest"] and tags["smoke.image_digest"].startswith("sha256:")
    status = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "--json"],
        cwd=repo, env={**env, "RELEASE_VERIFY_KEY": str(keys[1])}, capture_output=True, text=True,
    )  # fmt: skip
    state = json.loads(status.stdout)
    assert [v["signed"] for v in state["versions"]] == ["verified", "verified"]

    # the image smoke tested was published, tagged with the git sha; the registry serves the recorded digest,
    # and its manifest's config is the image smoke ran (byte for byte: same config digest = same image ID)
    assert tags["image.ref"] == f"{repository}:{sha}"
    served_digest, pushed = manifest(image_registry, "churn-api", sha)
    assert tags["image.digest"] == served_digest
    assert pushed["config"]["digest"] == tags["smoke.image_digest"]
    published = f"{repository}:{sha}@{served_digest}"
    assert state["versions"][1]["image"] == published and state["versions"][0]["image"] == ""
    # promotion recorded the image production serves with
    promotion = history(MlflowClient(server), MODEL)[-1]
    assert (promotion["alias"], promotion["to"], promotion["image"]) == ("production", "2", published)
    assert f"Published version **2**'s smoke-tested image: `{published}`" in output

    # publishing refuses anything but the smoke-tested image of a released version, and names a dead registry
    monkeypatch.chdir(repo)
    for name, value in {**env, "RELEASE_VERIFY_KEY": str(keys[1]), "IMAGE_REPOSITORY": repository}.items():
        monkeypatch.setenv(name, value)
    image = tags["smoke.target"].split()[1]
    assert cli("publish", "--version", "2", "--image", LOCAL_BASE) == 1
    assert f"image {LOCAL_BASE} (sha256:" in cli.err and "is not the image smoke tested for version 2" in cli.err
    assert cli("publish", "--version", "1", "--image", image) == 1
    assert "version 1 was not smoke-tested as an image" in cli.err
    dead = f"127.0.0.1:{free_port()}/churn-api"
    assert cli("publish", "--version", "2", "--image", image, "--repository", dead) == 3
    [error] = [line for line in cli.err.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: image registry {dead.split('/')[0]}: `podman push` failed")
    assert cli.err.strip().endswith(error) and "Traceback" not in cli.err
    assert registry(server)[1][1].tags["image.digest"] == served_digest  # a failed publish changed nothing

    # a pull request gates on an ephemeral store, compares with the team's production, and writes nothing there
    runs_before = len(
        MlflowClient(server).search_runs([MlflowClient(server).get_experiment_by_name("churn").experiment_id])
    )
    # (on a branch that lowers the F1 floor: the report shows the policy change, the gate still decides)
    base_sha = git_head(repo)
    git(repo, "checkout", "-q", "-b", "lower-floor")
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("f1: {min: 0.55,", "f1: {min: 0.30,"))
    commit(repo, "lower the F1 floor")
    pull = {"number": 7, "head": {"ref": "lower-floor"}, "base": {"ref": "main", "sha": base_sha}}
    event = repo.parent / "pull_request.json"
    event.write_text(json.dumps({"pull_request": pull}))
    output = act(repo, server, "pull_request", "-e", str(event))
    git(repo, "checkout", "-q", "main")
    assert act.returncode == 0, output[-3000:]
    assert "production v2" in output
    assert "policy loosened: lowers the F1 floor from 0.55 to 0.3" in output
    experiment = MlflowClient(server).get_experiment_by_name("churn").experiment_id
    assert len(MlflowClient(server).search_runs([experiment])) == runs_before
    assert registry(server)[0] == aliases and len(registry(server)[1]) == 2

    # when a push sets the F1 floor impossibly high, it fails at the gate and changes nothing
    params.write_text(params.read_text().replace("f1: {min: 0.55,", "f1: {min: 0.99,"))
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
        repo, server, "workflow_dispatch", "-W", ".github/workflows/rollback.yml", "--input", f"reason={reason}",
        keys=keys,
    )  # fmt: skip
    assert act.returncode == 0, output[-3000:]
    assert registry(server)[0] == {"candidate": "2", "production": "1"}
    last = history(MlflowClient(server), MODEL)[-1]
    assert (last["alias"], last["from"], last["to"]) == ("production", "2", "1")
    assert last["reason"] == f"rollback: {reason}" and last["image"] == ""  # version 1 was never published

    # a hand-edited image record (another digest, same registry) is not signed: production does not go there
    MlflowClient(server).set_model_version_tag(MODEL, "2", "image.digest", "sha256:" + "0" * 64)
    assert cli("rollback", "--to", "2", "--reason", "tampered image") == 1
    assert "image (image.ref, image.digest) is not signed by the release key" in cli.err
    assert registry(server)[0]["production"] == "1"


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
