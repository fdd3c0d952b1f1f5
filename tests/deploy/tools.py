"""Paths and the command-line tools the deploy/ checks run (each test fails naming what to install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
# The probe child's memory limit smoke runs a version under (the API's default, api/load_probe.py): a replica
# given less could refuse a version that passed smoke. And the API beside it: ~250 MiB measured after imports,
# plus a model and a 20 MB request being parsed.
SMOKE_PROBE_MEMORY_MB = 2048
API_MEMORY_MB = 768
# What the API exports (the serving side's metric contract); a rule naming anything else has a typo.
API_METRICS = {
    "api_requests_total",
    "api_request_latency_seconds_bucket",
    "api_predictions_total",
    "api_positive_predictions_total",
    "api_score_bucket",
    "api_serving_model_version",
    "api_model_loaded",
    "api_ready",
    "api_registry_up",
    "api_model_reloads_total",
    "api_feature_values_total",
    "api_feature_expected_ratio",
    # What release decisions read (GitHub issue 25): counted requests, their events, per-record latency.
    "api_decision_requests_total",
    "api_decision_events_total",
    "api_decision_latency_seconds_bucket",
    "api_decision_uncounted_total",
    "api_shadow_decision_total",
}


def system_tool(name: str, package: str) -> str:
    """Return the path of a command from a Debian package, or fail naming the package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {package}")
    return path


def venv_tool(name: str, pin: str) -> str:
    """Return the path of a command installed in this virtualenv, or fail naming the pin to install."""
    path = shutil.which(name, path=str(VENV_BIN))
    if path is None:
        pytest.fail(f"{name} is not installed in the virtualenv: pip install {pin}")
    return path


def run(command: list[str], cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its text output (a non-zero exit does not raise)."""
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False, timeout=timeout)


def load_yaml(path: Path) -> dict:
    """Read one YAML document (a mapping) safely."""
    return yaml.safe_load(path.read_text())


def rules() -> dict:
    """Read deploy/prometheus/rules.yml, the single source of the recording and alerting rules."""
    return load_yaml(DEPLOY / "prometheus" / "rules.yml")


def alerting_rules() -> list[dict]:
    """Return every alerting rule of deploy/prometheus/rules.yml."""
    return [rule for group in rules()["groups"] for rule in group["rules"] if "alert" in rule]
