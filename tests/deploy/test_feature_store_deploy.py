"""The opt-in online store (Redis) for serving by customer id: compose override and Kubernetes component, offline.

deploy/compose.features.yaml is merged with compose.yaml by `podman-compose config`
(as test_compose.py resolves the stack), with env.example's values and its
commented REDIS_PASSWORD set. deploy/k8s/components/feature-store is rendered by
`kubectl kustomize` from a temporary overlay that adds it to production (which
stays as committed, without it), then checked as test_k8s.py checks the overlays:
Kubernetes schemas, checkov, and what the API and Redis are given. Nothing runs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from .test_compose import COMPOSE, ENV_EXAMPLE, env_example, podman_compose
from .test_k8s import CHECKOV, CHECKOV_PIN, DIGEST, K8S, objects, one
from .tools import DEPLOY, load_yaml, run, system_tool, venv_tool

FEATURES = DEPLOY / "compose.features.yaml"
COMPONENT = K8S / "components" / "feature-store"
API_SERVICES = ["api-1", "api-2"]
REDIS_IMAGE = "redis:7.4.1-bookworm"
PLACEHOLDER = "change-me-redis"
API_LABELS = {"app.kubernetes.io/name": "churn-api"}


def env_with_redis(path: Path) -> Path:
    """Write env.example with its commented REDIS_PASSWORD line uncommented, as a user of the override does."""
    text = ENV_EXAMPLE.read_text()
    (line,) = re.findall(r"^# (REDIS_PASSWORD=.*)$", text, re.M)
    path.write_text(f"{text}\n{line}\n")
    return path


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The stack as podman-compose resolves compose.yaml plus the override, with env.example's values."""
    work = tmp_path_factory.mktemp("features-compose")
    env = env_with_redis(work / "features.env")
    result = run([*podman_compose("--env-file", str(env)), "-f", str(FEATURES), "config"], cwd=work)
    assert result.returncode == 0, result.stderr
    path = work / "resolved.yaml"
    path.write_text(result.stdout)
    return load_yaml(path)


def test_env_example_names_the_password_only_for_the_override() -> None:
    """REDIS_PASSWORD is a commented placeholder: compose.yaml alone asks for nothing more, the override uses it."""
    assert "REDIS_PASSWORD" not in env_example()  # test_compose: env.example lists exactly compose.yaml's variables
    assert f"# REDIS_PASSWORD={PLACEHOLDER}" in ENV_EXAMPLE.read_text().splitlines()
    assert set(re.findall(r"\$\{(\w+)", FEATURES.read_text())) == {"REDIS_PASSWORD"}
    assert "REDIS_PASSWORD" not in COMPOSE.read_text()


def test_the_override_merges_and_sends_both_replicas_to_redis(merged: dict) -> None:
    """api-1 and api-2 keep every setting of compose.yaml, gain FEATURE_STORE_URL and wait for a healthy Redis."""
    base = load_yaml(COMPOSE)
    api = base["x-api"]
    for name in API_SERVICES:
        service = merged["services"][name]
        env = service["environment"]
        assert env.pop("FEATURE_STORE_URL") == f"redis://:{PLACEHOLDER}@redis:6379/0", name
        assert set(env) == set(api["environment"]), name
        assert service["depends_on"] == {
            "mlflow": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert set(merged["services"]) == set(base["services"]) | {"redis"}
    assert "redis-data" in merged["volumes"]


def test_redis_is_pinned_locked_down_and_health_checked(merged: dict) -> None:
    """Pinned tag, non-root, read-only root, no capabilities, a memory limit, an authenticated healthcheck."""
    redis = merged["services"]["redis"]
    assert redis["image"] == REDIS_IMAGE
    assert redis["user"].split(":")[0] == "999"
    assert redis["read_only"] is True
    assert redis["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in redis["security_opt"]
    assert redis["mem_limit"] and redis["volumes"] == ["redis-data:/data"]
    assert all(port.startswith("127.0.0.1:") for port in redis.get("ports", []))  # loopback only, if any
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "redis-cli ping" in test[1] and "PONG" in test[1]
    assert redis["environment"] == {"REDISCLI_AUTH": PLACEHOLDER}
    script = redis["command"][-1]
    assert 'requirepass "$REDISCLI_AUTH"' in script and "noeviction" in script
    assert PLACEHOLDER not in " ".join(redis["command"]) + " ".join(test), "the password is on a command line"


def test_the_override_needs_the_password(tmp_path: Path) -> None:
    """Without REDIS_PASSWORD (env.example as it is), the override refuses to resolve, naming it."""
    result = run([*podman_compose("--env-file", str(ENV_EXAMPLE)), "-f", str(FEATURES), "config"], cwd=tmp_path)
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr


def test_the_override_file_holds_no_password_and_matches_the_compose_spec() -> None:
    """No literal password in the file; it validates against the compose-spec schema, as compose.yaml does."""
    text = FEATURES.read_text()
    assert "change-me" not in text
    assert re.findall(r"requirepass .*", text) == ['requirepass "$$REDISCLI_AUTH"']
    services = yaml.safe_load(text)["services"]
    for name in API_SERVICES:
        url = services[name]["environment"]["FEATURE_STORE_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", url), name
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", services["redis"]["environment"]["REDISCLI_AUTH"])
    check = venv_tool("check-jsonschema", "check-jsonschema==0.39.0")
    result = run([check, "--builtin-schema", "vendor.compose-spec", str(FEATURES)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Render production with the component added and Redis pinned by digest, as an overlay that opts in would."""
    kubectl = system_tool("kubectl", "kubectl (1.32, with kustomize v5)")
    copy = tmp_path_factory.mktemp("features-k8s") / "k8s"
    shutil.copytree(K8S, copy)
    path = copy / "overlays" / "production" / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    kustomization["components"] = [*kustomization.get("components", []), "../../components/feature-store"]
    kustomization["images"].append({"name": "redis", "newTag": "7.4.1-bookworm", "digest": DIGEST})
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    result = run([kubectl, "kustomize", str(path.parent)])
    assert result.returncode == 0, result.stderr
    out = copy.parent / "rendered.yaml"
    out.write_text(result.stdout)
    return out


def redis_deployment(path: Path) -> dict:
    """Return the rendered Redis Deployment."""
    (found,) = [o for o in objects(path) if o["kind"] == "Deployment" and o["metadata"]["name"] == "churn-redis"]
    return found


def named(path: Path, kind: str, name: str) -> dict:
    """Return the object of a kind and name in a rendered file."""
    (found,) = [o for o in objects(path) if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_the_component_is_opt_in() -> None:
    """A Component, added by no committed overlay."""
    assert load_yaml(COMPONENT / "kustomization.yaml")["kind"] == "Component"
    for overlay in ("staging", "production"):
        components = load_yaml(K8S / "overlays" / overlay / "kustomization.yaml").get("components", [])
        assert not any("feature-store" in component for component in components), overlay


def test_the_api_reads_the_store_url_from_the_secret(rendered: Path) -> None:
    """FEATURE_STORE_URL by secretKeyRef feature-store/url; no Secret and no password literal rendered."""
    api_deployment = named(rendered, "Deployment", "churn-api")
    (api,) = api_deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in api["env"]}
    assert env["FEATURE_STORE_URL"] == {
        "name": "FEATURE_STORE_URL",
        "valueFrom": {"secretKeyRef": {"name": "feature-store", "key": "url"}},
    }
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RELEASE_VERIFY_KEY"} <= set(env)  # kept
    assert [o for o in objects(rendered) if o["kind"] == "Secret"] == []
    assert "redis://" not in rendered.read_text() and "requirepass" in rendered.read_text()
    assert re.findall(r"requirepass .*", rendered.read_text()) == [
        'requirepass "$(cat /run/secrets/feature-store/password)"'
    ]


def test_redis_runs_non_root_read_only_sized_and_pinned(rendered: Path) -> None:
    """Non-root, read-only root, no capabilities, no token, requests and limits, the password as a file."""
    deployment = redis_deployment(rendered)
    pod = deployment["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = redis["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(redis["resources"]["requests"]) & set(redis["resources"]["limits"])
    assert redis["image"] == f"{REDIS_IMAGE}@{DIGEST}"  # the overlay's images: entry pins it
    assert load_yaml(COMPONENT / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        REDIS_IMAGE
    )
    mounts = {mount["mountPath"]: mount["name"] for mount in redis["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/data"]]
    secret = volumes[mounts["/run/secrets/feature-store"]]["secret"]
    assert secret["secretName"] == "feature-store" and secret["items"] == [{"key": "password", "path": "password"}]
    assert "env" not in redis, "the password is a file, not an environment variable"
    assert redis["readinessProbe"]["exec"]["command"][-1].count("REDISCLI_AUTH") >= 1
    # Redis's pods are not the API's: the API's Service, PDB and NetworkPolicy never select them
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "churn-redis"
    assert named(rendered, "Service", "churn-redis")["spec"]["selector"].items() <= labels.items()


def test_only_the_api_reaches_redis_and_the_api_may(rendered: Path) -> None:
    """Redis's policy admits the API's pods on 6379 and nothing else, and allows no egress; the API's adds 6379."""
    policy = named(rendered, "NetworkPolicy", "churn-redis")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "churn-redis"}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["egress"] == []
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": API_LABELS}}]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    api = named(rendered, "NetworkPolicy", "churn-api")["spec"]
    dns, tracking, redis = api["egress"]
    assert "203.0.113.10/32" in json.dumps(tracking), "the overlay's tracking rule stays in place"
    assert redis == {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "churn-redis"}}}],
        "ports": [{"port": 6379, "protocol": "TCP"}],
    }
    assert {port["port"] for port in dns["ports"]} == {53}


@pytest.mark.parametrize("version", ["1.30.0", "1.32.0"])
def test_the_rendered_objects_validate(rendered: Path, version: str) -> None:
    """Strict Kubernetes schema validation of everything, Redis included."""
    validate = venv_tool("kubernetes-validate", "kubernetes-validate==1.37.0")
    result = run([validate, "--strict", "--quiet", "-k", version, str(rendered)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr)) <= {
        "ServiceMonitor",
        "PrometheusRule",
    }


def test_checkov_finds_nothing_on_redis(rendered: Path) -> None:
    """Checkov passes every check on the rendered objects (its suppressions are the base's, with reasons)."""
    if not CHECKOV.exists():
        pytest.skip(f"checkov is installed by tests/deploy/test_k8s.py ({CHECKOV_PIN})")
    result = run([str(CHECKOV), "-f", str(rendered), "--framework", "kubernetes", "--skip-download", "-o", "json"])
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert one(rendered, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
