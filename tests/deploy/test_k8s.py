"""deploy/k8s: every overlay renders offline and what it renders is valid, pinned, locked down and sized.

Each overlay is checked as committed (with the monitoring component) and without
it (a cluster with no Prometheus operator), from a copy whose overlays drop
their `components:`. No API server is needed: kubectl kustomize renders,
kubernetes-validate checks the Kubernetes schemas, the prometheus-operator
models (cloudcoil, pydantic) check ServiceMonitor and PrometheusRule, and
checkov looks for insecure settings.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

from pipeline.core import kustomize

from . import rules_sync
from .tools import API_MEMORY_MB, DEPLOY, ROOT, SMOKE_PROBE_MEMORY_MB, load_yaml, rules, run, system_tool, venv_tool

K8S = DEPLOY / "k8s"
OVERLAYS = ["staging", "production"]
VARIANTS = [(overlay, monitoring) for overlay in OVERLAYS for monitoring in (True, False)]
VARIANT_IDS = [f"{overlay}-{'with' if monitoring else 'without'}-monitoring" for overlay, monitoring in VARIANTS]
# The oldest release the manifests need (the preStop `sleep` action is beta, on by default, from 1.30)
# and the release of this machine's kubectl.
KUBERNETES_VERSIONS = ["1.30.0", "1.32.0"]
CHECKOV = ROOT / "build" / "checkov-venv" / "bin" / "checkov"
CHECKOV_PIN = "checkov==3.3.30"
PLACEHOLDER_TRACKING_CIDR = "192.0.2.1/32"  # base's egress rule, which every overlay replaces
DIGEST = "sha256:" + "0123456789abcdef" * 4


def without_monitoring(root: Path) -> Path:
    """Return a copy of deploy/k8s under root whose overlays include no component."""
    copy = root / "k8s"
    shutil.copytree(K8S, copy)
    for overlay in OVERLAYS:
        path = copy / "overlays" / overlay / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        kustomization.pop("components")
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return copy


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    """Render each overlay with and without monitoring into a file; return the files by (overlay, monitoring)."""
    kubectl = system_tool("kubectl", "kubectl (1.32, with kustomize v5)")
    out = tmp_path_factory.mktemp("rendered")
    bare = without_monitoring(tmp_path_factory.mktemp("copy"))
    files = {}
    for overlay, monitoring in VARIANTS:
        source = (K8S if monitoring else bare) / "overlays" / overlay
        result = run([kubectl, "kustomize", str(source)])
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        path = files[overlay, monitoring] = out / f"{overlay}-{monitoring}.yaml"
        path.write_text(result.stdout)
    return files


def objects(path: Path) -> list[dict]:
    """Return the objects of a rendered multi-document YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(path: Path, kind: str) -> dict:
    """Return the only object of a kind in a rendered file."""
    (found,) = [obj for obj in objects(path) if obj["kind"] == kind]
    return found


def container(path: Path) -> dict:
    """Return the API container of the rendered Deployment."""
    (api,) = one(path, "Deployment")["spec"]["template"]["spec"]["containers"]
    return api


def config(path: Path) -> dict[str, str]:
    """Return the rendered ConfigMap's data: the API's settings but secrets."""
    return one(path, "ConfigMap")["data"]


def mebibytes(quantity: str) -> float:
    """Convert a Kubernetes memory quantity (Mi or Gi) to MiB."""
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", quantity).groups()
    return float(number) * (1024 if unit == "Gi" else 1)


def test_the_committed_overlays_include_monitoring(rendered: dict) -> None:
    """As committed, each overlay has the ServiceMonitor and the PrometheusRule; without the component, neither."""
    for (overlay, monitoring), path in rendered.items():
        kinds = {obj["kind"] for obj in objects(path)}
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds if monitoring else not kinds & {"ServiceMonitor"}, overlay
        expected = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment"}
        assert expected | {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("overlay", "monitoring"), VARIANTS, ids=VARIANT_IDS)
def test_objects_validate_against_kubernetes_schemas(
    rendered: dict, overlay: str, monitoring: bool, version: str
) -> None:
    """Strict schema validation (an unknown or misspelt field fails) of every built-in object."""
    validate = venv_tool("kubernetes-validate", "kubernetes-validate==1.37.0")
    result = run([validate, "--strict", "--quiet", "-k", version, str(rendered[overlay, monitoring])])
    assert result.returncode == 0, result.stdout + result.stderr
    # Only the operator's kinds may go unchecked here (they have their own test).
    unchecked = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unchecked <= {"ServiceMonitor", "PrometheusRule"}


def test_strict_validation_catches_a_misspelt_field(rendered: dict, tmp_path: Path) -> None:
    """The schema check is not a formality: a misspelt securityContext field fails it."""
    validate = venv_tool("kubernetes-validate", "kubernetes-validate==1.37.0")
    text = rendered["production", False].read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    assert run([validate, "--strict", "--quiet", "-k", "1.32.0", str(broken)]).returncode != 0


def unknown_fields(given: object, validated: object, where: str = "") -> list[str]:
    """List the paths of fields in `given` that the validated model dropped (fields the CRD does not know)."""
    if isinstance(given, dict) and isinstance(validated, dict):
        found = [f"{where}/{key}" for key in given if key not in validated]
        return found + [
            path
            for key in given
            if key in validated
            for path in unknown_fields(given[key], validated[key], f"{where}/{key}")
        ]
    if isinstance(given, list) and isinstance(validated, list):
        return [
            path
            for i, pair in enumerate(zip(given, validated, strict=False))
            for path in unknown_fields(*pair, f"{where}/{i}")
        ]
    return []


def validate_custom_resource(obj: dict) -> list[str]:
    """Validate a ServiceMonitor or PrometheusRule against the operator's CRD schema; return unknown fields."""
    model = getattr(prometheus_operator, obj["kind"]).model_validate(obj)  # raises on a type, pattern or enum error
    return unknown_fields(obj, model.model_dump(by_alias=True, exclude_none=True, mode="json"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_objects_validate_against_their_crd_schemas(rendered: dict, overlay: str) -> None:
    """ServiceMonitor and PrometheusRule match prometheus-operator's CRDs, with no field the CRD lacks."""
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert validate_custom_resource(one(rendered[overlay, True], kind)) == [], kind


def test_crd_validation_catches_misspelt_and_invalid_fields(rendered: dict) -> None:
    """A misspelt field is reported by path, a malformed duration is refused."""
    monitor = one(rendered["production", True], "ServiceMonitor")
    misspelt = json.loads(json.dumps(monitor))
    misspelt["spec"]["endpoints"][0]["intervall"] = misspelt["spec"]["endpoints"][0].pop("interval")
    assert validate_custom_resource(misspelt) == ["/spec/endpoints/0/intervall"]
    invalid = json.loads(json.dumps(monitor))
    invalid["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError, match="interval"):
        validate_custom_resource(invalid)


def test_prometheus_rule_carries_the_rules_file(rendered: dict) -> None:
    """The committed PrometheusRule is what rules_sync writes, and renders with rules.yml's groups unchanged."""
    assert rules_sync.PROMETHEUS_RULE.read_text() == rules_sync.render(), "run: python -m tests.deploy.rules_sync"
    for overlay in OVERLAYS:
        assert one(rendered[overlay, True], "PrometheusRule")["spec"]["groups"] == rules()["groups"]


def test_service_monitor_scrapes_the_job_the_rules_select(rendered: dict) -> None:
    """Its selector matches the Service, its port exists, and job and environment label every series as rules expect."""
    for overlay in OVERLAYS:
        path = rendered[overlay, True]
        monitor, service = one(path, "ServiceMonitor")["spec"], one(path, "Service")
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert {endpoint["port"] for endpoint in monitor["endpoints"]} == {"metrics"}
        assert {endpoint["port"] for endpoint in monitor["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
        assert service["metadata"]["labels"][monitor["jobLabel"]] == "churn-api"
        assert service["metadata"]["labels"]["environment"] == overlay
        assert monitor["targetLabels"] == ["environment"]


@pytest.mark.parametrize(("overlay", "monitoring"), VARIANTS, ids=VARIANT_IDS)
def test_every_image_is_pinned_by_digest(rendered: dict, overlay: str, monitoring: bool) -> None:
    """Every container of every workload names its image by sha256 digest, never by a tag alone."""
    images = []
    for obj in objects(rendered[overlay, monitoring]):
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        images += [c["image"] for key in ("initContainers", "containers") for c in pod.get(key, [])]
    assert images
    for image in images:
        assert re.fullmatch(r"[a-z0-9./_-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}", image), image


@pytest.fixture(scope="module")
def checkov() -> str:
    """Return checkov, installed in a virtualenv of its own (its pins clash with the project's boto3)."""
    if not CHECKOV.exists():
        python = shutil.which("python3.11") or "python3"
        assert run([python, "-m", "venv", str(CHECKOV.parents[1])]).returncode == 0
        pip = run([str(CHECKOV.parent / "pip"), "install", "--quiet", "--disable-pip-version-check", CHECKOV_PIN])
        assert pip.returncode == 0, pip.stdout + pip.stderr
    return str(CHECKOV)


def suppressions(path: Path) -> dict[str, str]:
    """Return the checkov suppressions of a rendered file: check id to reason, from `checkov.io/skipN` annotations."""
    found = {}
    for obj in objects(path):
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                found[check] = reason
    return found


@pytest.mark.parametrize(("overlay", "monitoring"), VARIANTS, ids=VARIANT_IDS)
def test_checkov_finds_nothing_unjustified(checkov: str, rendered: dict, overlay: str, monitoring: bool) -> None:
    """Checkov passes every check on the rendered objects but those suppressed with a stated reason."""
    path = rendered[overlay, monitoring]
    result = run([checkov, "-f", str(path), "--framework", "kubernetes", "--skip-download", "-o", "json"])
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["resource_count"] >= len(objects(path))
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert failed == [], failed
    reasons = suppressions(path)
    assert {check["check_id"] for check in report["results"]["skipped_checks"]} <= set(reasons)
    for check, reason in reasons.items():
        assert len(reason.split()) >= 5, f"{check} is suppressed without a reason"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_locked_down(rendered: dict, overlay: str) -> None:
    """Non-root uid 10001, read-only root with emptyDirs where it writes, no capabilities, no token."""
    path = rendered[overlay, True]
    pod = one(path, "Deployment")["spec"]["template"]["spec"]
    api = container(path)
    assert pod["automountServiceAccountToken"] is False
    assert one(path, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = api["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in api["volumeMounts"]}
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    env = {item["name"]: item.get("value") for item in api["env"]}
    for writable in ("/tmp", env["PROMETHEUS_MULTIPROC_DIR"]):
        assert mounts[writable] in empty_dirs, writable
    namespace = one(path, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_and_settings_come_from_the_config_map(rendered: dict, overlay: str) -> None:
    """Credentials and the verify key by secretKeyRef only; the tracking URI and the rest from the ConfigMap."""
    path = rendered[overlay, False]
    assert [obj for obj in objects(path) if obj["kind"] == "Secret"] == []
    api = container(path)
    from_secrets = {item["name"] for item in api["env"] if "secretKeyRef" in item.get("valueFrom", {})}
    assert from_secrets == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RELEASE_VERIFY_KEY"}
    assert api["envFrom"] == [{"configMapRef": {"name": one(path, "ConfigMap")["metadata"]["name"]}}]
    settings = config(path)
    assert {"MLFLOW_TRACKING_URI", "MODEL_NAME", "MODEL_ALIAS", "RELOAD_INTERVAL_S", "PROBE_MEMORY_MB"} <= set(settings)
    assert "@" not in urlsplit(settings["MLFLOW_TRACKING_URI"]).netloc, "credentials belong in the Secret"
    assert not {"MLFLOW_TRACKING_PASSWORD", "RELEASE_VERIFY_KEY"} & set(settings)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_limit_holds_the_api_its_probe_child_and_its_shadow_scorer(rendered: dict, overlay: str) -> None:
    """PROBE_MEMORY_MB is what smoke ran under; the limit holds the API, such a child and a shadow scorer (a fork)."""
    path = rendered[overlay, False]
    settings = config(path)
    assert int(settings["PROBE_MEMORY_MB"]) == SMOKE_PROBE_MEMORY_MB
    workers = int(settings["WEB_CONCURRENCY"])
    resources = container(path)["resources"]
    worker = API_MEMORY_MB * 2 + int(settings["PROBE_MEMORY_MB"])  # the scorer: up to a worker's worth of pages
    assert mebibytes(resources["limits"]["memory"]) >= workers * worker
    assert mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_wait_for_the_first_model_load(rendered: dict, overlay: str) -> None:
    """Liveness on /health, readiness on /ready, and a startup probe on /ready allowing minutes for a first load."""
    api = container(rendered[overlay, False])
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    allowed_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert allowed_s >= 180
    assert allowed_s >= 2 * float(config(rendered[overlay, False])["PROBE_TIMEOUT_S"])
    assert {probe["httpGet"]["port"] for probe in (startup, api["livenessProbe"], api["readinessProbe"])} == {"http"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_clients_and_scrapes_and_reaches_only_dns_and_tracking(
    rendered: dict, overlay: str
) -> None:
    """Clients to the API port, the monitoring namespace to the metrics port only; egress to DNS and tracking."""
    path = rendered[overlay, False]
    policy = one(path, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "churn-api"}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    clients, scrapes = policy["ingress"]
    assert clients["ports"] == [{"port": "http", "protocol": "TCP"}] and {"podSelector": {}} in clients["from"]
    assert all(peer.get("namespaceSelector", {}).get("matchLabels") != monitoring for peer in clients["from"])
    assert scrapes["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in scrapes["from"]] == [monitoring]
    # the metrics port is the one the API serves /metrics on, and the ServiceMonitor scrapes it by name
    [api] = one(path, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": 8000, "metrics": int(config(path)["METRICS_PORT"])}
    dns, tracking = policy["egress"]
    assert {port["port"] for port in dns["ports"]} == {53}
    uri = urlsplit(config(path)["MLFLOW_TRACKING_URI"])
    assert [port["port"] for port in tracking["ports"]] == [uri.port or {"https": 443, "http": 80}[uri.scheme]]
    assert PLACEHOLDER_TRACKING_CIDR not in json.dumps(tracking), "the overlay must set its tracking server"


def test_overlays_differ_where_environments_do(rendered: dict) -> None:
    """Namespace, environment label, tracking server, HPA bounds and resources differ; production has more replicas."""
    staging, production = rendered["staging", True], rendered["production", True]
    for kind in ("Deployment", "Service"):
        assert one(staging, kind)["metadata"]["namespace"] != one(production, kind)["metadata"]["namespace"]
    assert config(staging)["MLFLOW_TRACKING_URI"] != config(production)["MLFLOW_TRACKING_URI"]
    assert urlsplit(config(production)["MLFLOW_TRACKING_URI"]).scheme == "https", "credentials cross the network"
    assert container(staging)["resources"] != container(production)["resources"]
    hpa = {name: one(path, "HorizontalPodAutoscaler")["spec"] for name, path in (("s", staging), ("p", production))}
    assert hpa["s"]["minReplicas"] < hpa["p"]["minReplicas"] and hpa["s"]["maxReplicas"] < hpa["p"]["maxReplicas"]
    assert hpa["p"]["minReplicas"] >= 2, "production survives losing a replica"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_owns_the_replica_count(rendered: dict, overlay: str) -> None:
    """No replicas in the Deployment (an apply would reset the HPA's count); the HPA and PDB target the API."""
    path = rendered[overlay, False]
    deployment = one(path, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = one(path, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    pdb = one(path, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_overlays_say_how_promotion_sets_the_digest() -> None:
    """Each overlay's images entry names churn-api, says that promote and rollback pin it, and can be pinned."""
    for overlay in OVERLAYS:
        path = K8S / "overlays" / overlay / "kustomization.yaml"
        (image,) = load_yaml(path)["images"]
        assert image["name"] == "churn-api" and image["digest"].startswith("sha256:")
        text = path.read_text()
        assert "promote and rollback" in text and f"kubectl apply -k deploy/k8s/overlays/{overlay}" in text
        # the edit promote and rollback make applies to the overlay as committed
        pinned = kustomize.pin_image(text, "churn-api", kustomize.PinnedImage("registry.example/churn-api", DIGEST))
        assert yaml.safe_load(pinned)["images"] == [
            {"name": "churn-api", "newName": "registry.example/churn-api", "digest": DIGEST}
        ]
