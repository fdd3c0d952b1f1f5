"""Every way deploy/ scrapes the API gives its series an `environment` label (GitHub issue 25).

The rules aggregate `by (environment, version)`, Alertmanager sends only
production's rollbacks to the relay, and `pipeline rollout`/`watch` read one
environment from Prometheus (PROMETHEUS_ENVIRONMENT): a series scraped without
the label would be judged with another environment's versions. Checked for
every overlay folder there is (a new one too) and every compose scrape job
that reaches an API replica.
"""

from __future__ import annotations

import pytest
import yaml

from .tools import DEPLOY, load_yaml, run, system_tool

OVERLAYS = sorted(path.parent.name for path in (DEPLOY / "k8s" / "overlays").glob("*/kustomization.yaml"))
METRICS_PORT = 9102  # the API replicas' /metrics (METRICS_PORT)


def test_the_overlays_are_found() -> None:
    assert {"staging", "production"} <= set(OVERLAYS)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Every overlay as kustomize renders it, by folder name."""
    kubectl = system_tool("kubectl", "kubectl (1.32, with kustomize v5)")
    out = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)])
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_labels_what_is_scraped_with_its_environment(rendered: dict, overlay: str) -> None:
    """The overlay's folder is its environment: on every object, the Service the ServiceMonitor copies it from,
    and the pods (for a PodMonitor or a scrape by pod); the ServiceMonitor copies it onto every series."""
    objects = rendered[overlay]
    for obj in objects:
        assert obj["metadata"].get("labels", {}).get("environment") == overlay, (obj["kind"], obj["metadata"]["name"])
    (deployment,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["environment"] == overlay
    monitors = [obj for obj in objects if obj["kind"] == "ServiceMonitor"]
    assert monitors, f"{overlay} has no ServiceMonitor: add components: [../../components/monitoring]"
    for monitor in monitors:
        assert "environment" in monitor["spec"]["targetLabels"]
        selected = monitor["spec"]["selector"]["matchLabels"].items()
        services = [o for o in objects if o["kind"] == "Service" and selected <= o["metadata"]["labels"].items()]
        assert services and all(service["metadata"]["labels"]["environment"] == overlay for service in services)
        for endpoint in monitor["spec"]["endpoints"]:
            relabelled = endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", [])
            assert all(rule.get("targetLabel") != "environment" for rule in relabelled), endpoint
            assert not any(rule.get("action") in {"labeldrop", "labelkeep"} for rule in relabelled), endpoint


def api_targets(job: dict) -> list[str]:
    """The targets of a scrape job that are API replicas (their metrics port)."""
    return [t for group in job.get("static_configs", []) for t in group["targets"] if t.endswith(f":{METRICS_PORT}")]


def test_every_compose_scrape_of_the_api_sets_an_environment() -> None:
    """Every static target group of every job that scrapes an API replica carries an environment label."""
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    api_jobs = [job for job in config["scrape_configs"] if api_targets(job)]
    assert [job["job_name"] for job in api_jobs] == ["churn-api"]
    for job in api_jobs:
        assert not job.get("file_sd_configs") and not job.get("http_sd_configs"), "label every discovered target too"
        for group in job["static_configs"]:
            assert group.get("labels", {}).get("environment") in {"production", "staging"}, group
        relabelled = job.get("relabel_configs", []) + job.get("metric_relabel_configs", [])
        assert all(rule.get("target_label") != "environment" for rule in relabelled), job["job_name"]
        assert job.get("honor_labels") is not True, "an exported environment label must not override the scrape's"


def test_compose_services_scraped_are_the_api_replicas() -> None:
    """The compose scrape reaches every API service of the stack (none is scraped without the label)."""
    compose = load_yaml(DEPLOY / "compose.yaml")
    api_services = sorted(name for name in compose["services"] if name.startswith("api-"))
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    scraped = sorted(t.split(":")[0] for job in config["scrape_configs"] for t in api_targets(job))
    assert api_services and scraped == api_services
