"""The real workflow files, run by act on this host, against a real `mlflow server`.

Each push builds the real API image (docker or podman) and smoke-tests a real
container. The registry is read afterwards: act's exit code alone proves little.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from families import FAMILIES
from pipeline.runtime.container import LOCAL_BASE, find_engine
from pipeline.runtime.processes import free_port, stop, wait_for
from pipeline.runtime.tracking_server import tracking_server
from pipeline.store.alias_moves import history

from ..conftest import ROOT
from ..families import QUICK, TEAM_FEATURES

pytestmark = pytest.mark.e2e
MODEL = "churn-classifier"
# The workflow each event runs here: a push or pull request also starts ci.yml (the project's own lint and
# test-fast, which the suite runs itself), so act is told which file to run.
DEPLOY, PR_CHECKS = ".github/workflows/deploy.yml", ".github/workflows/pr-checks.yml"


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
    for name in (
        "MLFLOW_TRACKING_URI",
        "GITHUB_OUTPUT",
        "GITHUB_STEP_SUMMARY",
        "GITHUB_ENV",
        "GITHUB_ACTIONS",
        "KUBECONFIG",
    ):
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


@pytest.fixture(scope="module")
def published() -> dict:
    """What the act test published (repository, git sha, manifest digest): the later tests deploy it."""
    return {}


def registry(server: str) -> tuple[dict, list]:
    client = MlflowClient(server)
    aliases = {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    return aliases, versions


def test_push_pr_gate_failure_and_rollback_through_act(repo, server, keys, image_registry, published, cli, monkeypatch):
    # given version 1 in production, deployed with the plain CLI (smoke against uvicorn), signed
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "RELEASE_SIGNING_KEY": str(keys[0])}
    for command in (["make-data"], ["run"]):
        done = subprocess.run([sys.executable, "-m", "pipeline", *command], cwd=repo, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert registry(server)[0] == {"candidate": "1", "production": "1"}

    # when a push passes, the deploy workflow moves production to version 2, smoke-tested as an image
    repository = f"{image_registry}/churn-api"
    output = act(repo, server, "push", "-W", DEPLOY, "--var", f"IMAGE_REPOSITORY={repository}", keys=keys)
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
    published.update(repository=repository, sha=sha, digest=served_digest, image_id=tags["smoke.image_digest"],
                     image_tag=tags["smoke.target"].split()[1])  # fmt: skip
    image_ref = f"{repository}:{sha}@{served_digest}"
    assert state["versions"][1]["image"] == image_ref and state["versions"][0]["image"] == ""
    # promotion recorded the image production serves with
    promotion = history(MlflowClient(server), MODEL)[-1]
    assert (promotion["alias"], promotion["to"], promotion["image"]) == ("production", "2", image_ref)
    assert f"Published version **2**'s smoke-tested image: `{image_ref}`" in output
    # the promote job pinned the production overlay to that image; with no KUBECONFIG secret it printed the commands
    assert f"pinned to {repository}@{served_digest}" in output and "no KUBECONFIG: nothing applied" in output
    assert "kubectl rollout status deployment/churn-api -n churn-production --timeout=300s" in output

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
    output = act(repo, server, "pull_request", "-W", PR_CHECKS, "-e", str(event))
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
    output = act(repo, server, "push", "-W", DEPLOY)
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

    # the relay's dispatch for an alert about version 2 arrives after production already left it: nothing moves
    event = repo.parent / "repository_dispatch.json"
    payload = {"reason": "ChurnApiHigh5xxRatio: version 2 answers 9 % with a 5xx", "version": "2", "alert": {}}
    repository = {"default_branch": "main"}  # GitHub's payloads carry it; the release jobs' branch guard reads it
    event.write_text(json.dumps({"action": "rollback", "client_payload": payload, "repository": repository}))
    output = act(repo, server, "repository_dispatch", "-W", ".github/workflows/rollback.yml", "-e", str(event))
    assert act.returncode == 0, output[-3000:]
    assert "serves 1, not 2: production already moved; nothing to do" in output
    assert registry(server)[0]["production"] == "1" and history(MlflowClient(server), MODEL)[-1] == last

    # a release job run from a branch (its environment's branch policy is GitHub's; act has none) stops at the
    # guard, before the checkout, so nothing that could read the key runs: a rollback dispatched on a branch,
    # and the deploy's candidate job pushed from one
    guard = "it runs only on the default branch (main), not on refs/heads/feature"
    for workflow, event_name, job, inputs in (
        (".github/workflows/rollback.yml", "workflow_dispatch", "rollback", ["--input", "reason=from a branch"]),
        (DEPLOY, "push", "candidate", []),
    ):
        event = repo.parent / f"{event_name}-feature.json"
        event.write_text(json.dumps({"ref": "refs/heads/feature", "repository": repository}))
        output = act(repo, server, event_name, "-W", workflow, "-j", job, "-e", str(event), *inputs, keys=keys)
        # the guard step fails (act may drop the ::error:: line of a step that ends within milliseconds)
        assert act.returncode == 1, output[-3000:]
        assert "Failure - Main release jobs run on the default branch only" in output, output[-3000:]
        assert guard in output or "::error::" not in output  # whatever it printed named the branch
        assert "actions/checkout" not in output
    assert registry(server)[0]["production"] == "1" and history(MlflowClient(server), MODEL)[-1] == last

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


# The families whose versions need a library beyond scikit-learn in the image (derived from families/).
EXTRA_LIBRARY_FAMILIES = sorted(name for name, family in FAMILIES.items() if family.requirements)


@pytest.mark.parametrize("family", EXTRA_LIBRARY_FAMILIES)
def test_the_published_image_serves_each_family_that_needs_its_own_library(
    server, cli, project, published, monkeypatch, family
):
    # given the image the push test smoke-tested and published, and a version of another family (the team's
    # feature steps on the first of them)
    if "image_id" not in published:
        pytest.skip("the push test published no image")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    features = TEAM_FEATURES if family == EXTRA_LIBRARY_FAMILIES[0] else []
    sets = ["--set", f"registry.model_name=image-{family}", "--set", f"model.type={family}",
            "--set", f"model.features={json.dumps(features)}", "--set", "gates.metrics.f1.min=0.3",
            *[arg for key, value in QUICK.get(family, {}).items()
              for arg in ("--set", f"model.{family}.{key}={value}")]]  # fmt: skip
    assert cli("train", *sets) == 0, cli.err
    run_id = cli.out.strip()
    assert cli("gate", "--run-id", run_id, *sets) == 0 and cli("register", "--run-id", run_id, *sets) == 0, cli.err
    version = cli.out.strip()
    # when it is smoke-tested against that image, then the image loads it, answers its stored examples and it passes
    assert cli("smoke", "--version", version, "--image", published["image_tag"], *sets) == 0, cli.err
    assert cli("promote", "--version", version, *sets) == 0, cli.err
    [state] = cli.status_of(f"image-{family}")["versions"]
    assert state["smoke"] == "passed" and "production" in state["aliases"]


# What `podman kube play` (podman 4.3) can run of a rendered overlay: Deployments, Pods, ConfigMaps (Secrets are
# created as podman secrets, see below). Services, the HPA, the PDB, the NetworkPolicy, the ServiceMonitor and
# the PrometheusRule need a cluster; the Namespace and ServiceAccount mean nothing to podman.
KUBE_PLAY_KINDS = {"Deployment", "ConfigMap"}


def for_kube_play(documents: list[dict], name: str, tracking_uri: str, port: int, secret: str) -> list[dict]:
    """The rendered overlay rewritten only where podman kube play (4.3) on this machine cannot take it as is.

    - kinds it cannot run are dropped (KUBE_PLAY_KINDS is what stays);
    - the Deployment gets a name of its own (podman's names are machine-wide) and one replica;
    - host networking, as smoke runs the image: the tracking server listens on this host's loopback, which a
      pod network cannot reach; so the container listens on HOST/PORT of its own and declares no ports
      (podman refuses port mappings on the host network);
    - the ConfigMap's MLFLOW_TRACKING_URI is the test's server (the overlay's is a cluster address), and its
      METRICS_PORT a free port (on the host network 9102 may be taken);
    - MLFLOW_TRACKING_USERNAME/PASSWORD are dropped: the test's server has no authentication;
    - RELEASE_VERIFY_KEY comes from the podman secret `secret`: podman 4.3 stores a Secret given in the play
      file as YAML and then reads it as JSON (and fails), so the test creates the secret itself;
    - the liveness probe's httpGet, which podman turns into `curl` inside the container (the image has none),
      becomes the same GET in the image's python. Readiness and startup probes are not run by podman 4.3.
    Everything else (image by digest, user, read-only root, dropped capabilities, resources, emptyDirs,
    the ConfigMap's other settings) is played as rendered.
    """
    kept = [doc for doc in documents if doc["kind"] in KUBE_PLAY_KINDS]
    for doc in kept:
        if doc["kind"] == "ConfigMap":
            doc["data"]["MLFLOW_TRACKING_URI"] = tracking_uri
            doc["data"]["METRICS_PORT"] = str(free_port())  # on the host network, a port of its own too
        else:
            doc["metadata"]["name"] = name
            doc["spec"]["replicas"] = 1
            pod = doc["spec"]["template"]["spec"]
            pod["hostNetwork"] = True
            [api] = pod["containers"]
            api.pop("ports")
            api["env"] = [
                e for e in api["env"] if e["name"] not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
            ]
            for entry in api["env"]:
                if entry["name"] == "RELEASE_VERIFY_KEY":
                    entry["valueFrom"]["secretKeyRef"]["name"] = secret
            api["env"] += [{"name": "HOST", "value": "127.0.0.1"}, {"name": "PORT", "value": str(port)}]
            health = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"
            probe = api["livenessProbe"]
            probe.pop("httpGet")
            probe["exec"] = {"command": ["python", "-c", health]}
    return kept


def wait_ready(url: str, timeout_s: float, running) -> None:
    """Poll GET /ready until 200 (podman runs no readiness probe); fail with the last answer if it never comes."""
    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        if not running():
            pytest.fail(f"the container stopped before {url}/ready answered 200 (last: {last})")
        try:
            answer = httpx.get(f"{url}/ready", timeout=3)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(1)
    pytest.fail(f"{url}/ready did not answer 200 in {timeout_s:.0f}s (last: {last})")


def stored_examples(server: str, version: str) -> dict:
    client = MlflowClient(server)
    run_id = client.get_model_version(MODEL, version).run_id
    with open(client.download_artifacts(run_id, "smoke/examples.json")) as f:
        return json.load(f)


def test_kube_play_runs_the_overlay_production_pinned_to_the_published_image(
    repo, server, keys, published, cli, monkeypatch, tmp_path
):
    if not published:
        pytest.fail("needs the image the act test published (run the whole module)")
    started = time.monotonic()
    # given the act test's end state: production on version 1, and version 2's image record edited by hand;
    # put the record back as publish signed it, and roll production to version 2 with the pipeline, pinning the
    # staging overlay (a copy in the test's repository) to the image smoke tested with it
    MlflowClient(server).set_model_version_tag(MODEL, "2", "image.digest", published["digest"])
    monkeypatch.chdir(repo)
    for name, value in {"MLFLOW_TRACKING_URI": server, "RELEASE_SIGNING_KEY": str(keys[0]),
                        "RELEASE_VERIFY_KEY": str(keys[1])}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    overlay = "deploy/k8s/overlays/staging"
    reason = "e2e: serve version 2 from its published image"
    assert cli("rollback", "--to", "2", "--reason", reason, "--set", f"deploy.overlay={overlay}") == 0, cli.err
    reference = f"{published['repository']}@{published['digest']}"
    assert f"pinned to {reference}" in cli.err and f"kubectl apply -k {overlay}" in cli.err
    assert registry(server)[0]["production"] == "2"

    # when the overlay is rendered, it runs exactly that image by digest
    rendered = subprocess.run(["kubectl", "kustomize", overlay], cwd=repo, capture_output=True, text=True, check=True)
    documents = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    [deployment] = [doc for doc in documents if doc["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == reference

    # and podman kube play runs it (pulling it by digest from the local registry), on the test's tracking server
    engine = find_engine()
    suffix = uuid.uuid4().hex[:8]
    name, secret, port = f"churn-api-e2e-{suffix}", f"churn-api-release-{suffix}", free_port()
    play = tmp_path / "kube-play.yaml"
    play.write_text(yaml.safe_dump_all(for_kube_play(documents, name, server, port, secret), sort_keys=False))
    key = tmp_path / "verify-key.json"  # podman 4.3 reads a secretKeyRef's podman secret as JSON {key: base64}
    key.write_text(json.dumps({"verify-key": base64.b64encode(keys[1].read_bytes()).decode()}))
    container = f"{name}-pod-0-api"  # podman's name for the Deployment's first pod's container `api`
    engine.run("secret", "create", secret, str(key), quiet=True, timeout=60)
    try:
        engine.run("kube", "play", "--tls-verify=false", str(play), quiet=True, timeout=300)

        def running() -> bool:
            state = engine.run("inspect", "--format", "{{.State.Running}}", container, check=False, quiet=True)
            return state.stdout.strip() == "true"

        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, 120, running)
        except BaseException:
            logs = engine.run("logs", container, check=False, quiet=True, timeout=30)
            print((logs.stdout or "")[-3000:], (logs.stderr or "")[-3000:])
            raise
        # the container runs the image smoke tested with version 2 (its image ID), from the pinned reference
        inspected = engine.run("inspect", "--format", "{{.Image}} {{.ImageName}}", container, quiet=True).stdout.split()
        assert f"sha256:{inspected[0].removeprefix('sha256:')}" == published["image_id"]
        assert inspected[1] == reference
        # then /predict answers with the production version, and the stored smoke examples get the stored answers
        examples = stored_examples(server, "2")
        answer = httpx.post(f"{url}/predict", json={"records": examples["records"][:5]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == "2" and answer.json()["model_version"] == "2"
        assert answer.json()["predictions"] == examples["predictions"][:5]
    finally:
        engine.run("kube", "down", str(play), check=False, quiet=True, timeout=120)
        engine.run("secret", "rm", secret, check=False, quiet=True, timeout=60)
    assert time.monotonic() - started < 180


def test_compose_runs_the_api_service_with_the_published_image(repo, server, keys, published, tmp_path):
    """deploy/compose.yaml's api-1, run for real by podman-compose: the rest of the stack cannot start here.

    PostgreSQL, MinIO, Prometheus, Alertmanager and Grafana are images from registries this machine cannot
    reach, and the mlflow service builds FROM one; so `--no-deps` starts api-1 alone, with the file's own
    settings (user, read-only root, tmpfs, dropped capabilities, memory and CPU limits, the verify key
    mounted), and an override for what the missing services provide: the test's tracking server for
    `mlflow`, on the host network (ports and depends_on reset), and its HOST/PORT.
    """
    if not published:
        pytest.fail("needs the image the act test published (run the whole module)")
    engine = find_engine()
    reference = f"{published['repository']}@{published['digest']}"
    engine.run("pull", "--tls-verify=false", reference, quiet=True, timeout=300)  # from the local registry
    port, project = free_port(), f"churn-e2e-{uuid.uuid4().hex[:8]}"
    env_file = tmp_path / "compose.env"
    lines = (repo / "deploy" / "env.example").read_text().splitlines()
    # env.example's change-me placeholders stop the API's start (exit 2): the test sets secrets of its own
    values = {line.split("=")[0]: uuid.uuid4().hex for line in lines if "=change-me" in line}
    values |= {"API_IMAGE": reference, "RELEASE_VERIFY_KEY_FILE": str(keys[1])}
    env_file.write_text(
        "\n".join(f"{line.split('=')[0]}={values[line.split('=')[0]]}" if line.split("=")[0] in values else line
                  for line in lines) + "\n"
    )  # fmt: skip
    health = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/ready', timeout=2)"
    override = tmp_path / "compose.override.yaml"
    override.write_text(
        "services:\n  api-1:\n    network_mode: host\n    ports: !reset []\n    depends_on: !reset {}\n"
        f"    environment:\n      MLFLOW_TRACKING_URI: {server}\n      HOST: 127.0.0.1\n      PORT: '{port}'\n"
        f"    healthcheck:\n      test: {json.dumps(['CMD', 'python', '-c', health])}\n"
    )
    compose = [str(Path(sys.executable).parent / "podman-compose"), "--env-file", str(env_file),
               "-f", str(repo / "deploy" / "compose.yaml"), "-f", str(override), "-p", project]  # fmt: skip
    run_env = {**os.environ, **engine.env}
    container = f"{project}_api-1_1"
    try:
        up = subprocess.run([*compose, "up", "-d", "--no-deps", "api-1"], env=run_env, capture_output=True, text=True)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]

        def running() -> bool:
            state = engine.run("inspect", "--format", "{{.State.Running}}", container, check=False, quiet=True)
            return state.stdout.strip() == "true"

        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, 120, running)
        except BaseException:
            logs = engine.run("logs", container, check=False, quiet=True, timeout=30)
            print((logs.stdout or "")[-3000:], (logs.stderr or "")[-3000:])
            raise
        inspected = engine.run("inspect", "--format", "{{.Image}}", container, quiet=True).stdout.strip()
        assert f"sha256:{inspected.removeprefix('sha256:')}" == published["image_id"]
        production_version = registry(server)[0]["production"]
        examples = stored_examples(server, production_version)
        answer = httpx.post(f"{url}/predict", json={"records": examples["records"][:5]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == production_version
        assert answer.json()["predictions"] == examples["predictions"][:5]
    finally:
        subprocess.run([*compose, "down"], env=run_env, capture_output=True, timeout=180)
