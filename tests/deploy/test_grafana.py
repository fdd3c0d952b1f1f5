"""deploy/grafana: the dashboard's structure and queries, and the provisioning files, checked without a Grafana.

No Grafana server can run here, so every query is parsed by promtool (as a
recording rule, after Grafana's variables are replaced by values) and checked
against the metrics the API exports and the rules record. A later test runs the
queries against a real Prometheus scraping the real API.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from .tools import API_METRICS, DEPLOY, load_yaml, rules, run, system_tool

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "churn-api.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
# Grafana's variables, with a value each so that the query parses as plain PromQL.
VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "environment": "production"}
# Keys Grafana reads in provisioning files (grafana.com/docs: provisioning); anything else is a typo it ignores.
DATASOURCE_KEYS = {
    "name", "type", "uid", "access", "orgId", "url", "user", "database", "basicAuth", "basicAuthUser",
    "withCredentials", "isDefault", "jsonData", "secureJsonData", "version", "editable",
}  # fmt: skip
PROVIDER_KEYS = {
    "name", "orgId", "folder", "folderUid", "type", "disableDeletion", "updateIntervalSeconds", "allowUiUpdates",
    "options",
}  # fmt: skip
# What the on-call engineer must see, by the series each panel reads.
REQUIRED_SERIES = {
    "api:request_rate:5m",
    "api:request_5xx_ratio:5m",
    "api:request_4xx_ratio:5m",
    "api:request_latency_seconds:quantile_5m",
    "api_serving_model_version",
    "api_model_reloads_total",
    "api:feature_psi:15m",
    "api_ready",
    "api_registry_up",
}


def dashboard() -> dict:
    """Read the dashboard JSON."""
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    """Return every panel, rows' nested panels included."""
    top = dashboard()["panels"]
    return [panel for row in top for panel in [row, *row.get("panels", [])]]


def queries() -> dict[str, str]:
    """Return every PromQL query of the dashboard (panels, annotations, variables) by where it is."""
    found = {}
    for panel in panels():
        for target in panel.get("targets", []):
            found[f"panel {panel['id']} {target['refId']}"] = target["expr"]
    for annotation in dashboard()["annotations"]["list"]:
        if "expr" in annotation:
            found[f"annotation {annotation['name']}"] = annotation["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":  # label_values(SELECTOR, label): the selector is PromQL
            found[f"variable {variable['name']}"] = re.fullmatch(r"label_values\((.+), *\w+\)", variable["definition"])[
                1
            ]
    return found


def substitute(query: str) -> str:
    """Replace Grafana's $name and ${name} variables with values; fail on an unknown one."""

    def value(match: re.Match) -> str:
        """Return the value of one variable."""
        name = match[1] or match[2]
        assert name in VARIABLES, f"unknown variable ${name} in {query}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, query)


def test_dashboard_is_valid_json_with_unique_panel_ids() -> None:
    """Valid JSON, a stable uid and title, and panel ids unique across the dashboard."""
    board = dashboard()
    assert board["uid"] == "churn-api" and board["title"]
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), ids
    assert all(isinstance(panel_id, int) for panel_id in ids)


def test_every_panel_has_a_datasource_queries_and_a_place() -> None:
    """Each panel reads the datasource variable, has queries with unique refIds, and a position on the grid."""
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["title"] and panel.get("description"), panel["id"]


def test_panels_do_not_overlap() -> None:
    """No two panels share a cell of the 24-column grid."""
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


def test_every_query_parses(tmp_path: Path) -> None:
    """Each query, variables substituted, is valid PromQL: promtool parses it as a recording rule."""
    promtool = system_tool("promtool", "prometheus")
    group = [
        {"record": f"grafana:query:{index}", "expr": substitute(expr)} for index, expr in enumerate(queries().values())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": group}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + "\n".join(queries())


def test_queries_read_only_series_that_exist() -> None:
    """Every series is one the API exports or rules.yml records, and the panels show what on-call needs."""
    recorded = {rule["record"] for group in rules()["groups"] for rule in group["rules"] if "record" in rule}
    used = set()
    for where, expr in queries().items():
        names = set(re.findall(r"\b(api:[a-z0-9_:]+|api_[a-z_]+)\b", expr))
        assert names <= API_METRICS | recorded, f"{where}: {names - API_METRICS - recorded}"
        assert re.findall(r"\bapi_[a-z_]+\{([^}]*)\}", expr) == [] or 'job="churn-api"' in expr, where
        used |= names
    assert used >= REQUIRED_SERIES, REQUIRED_SERIES - used


def test_release_moves_are_annotations() -> None:
    """The alias moves every replica follows show as annotations, from changes of the served version."""
    annotations = {item["name"]: item for item in dashboard()["annotations"]["list"]}
    assert "changes(api_serving_model_version" in annotations["Release moves"]["expr"]
    assert annotations["Release moves"]["enable"] is True
    assert 'result="refused"' in annotations["Refused versions"]["expr"]


def test_datasource_provisioning() -> None:
    """Version 1 of the format, only keys Grafana reads, and the datasource the dashboard defaults to."""
    config = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")
    assert config["apiVersion"] == 1 and set(config) <= {"apiVersion", "datasources", "deleteDatasources", "prune"}
    (source,) = config["datasources"]
    assert set(source) <= DATASOURCE_KEYS, set(source) - DATASOURCE_KEYS
    assert source["type"] == "prometheus" and source["access"] in {"proxy", "direct"}
    assert source["url"].startswith("http")
    (variable,) = [item for item in dashboard()["templating"]["list"] if item["type"] == "datasource"]
    assert variable["current"]["value"] == source["uid"]


def test_dashboard_provisioning() -> None:
    """A file provider with only the keys Grafana reads, loading from an absolute path."""
    config = load_yaml(PROVISIONING / "dashboards" / "churn-api.yml")
    assert config["apiVersion"] == 1 and set(config) == {"apiVersion", "providers"}
    (provider,) = config["providers"]
    assert set(provider) <= PROVIDER_KEYS, set(provider) - PROVIDER_KEYS
    assert provider["type"] == "file"
    assert set(provider["options"]) <= {"path", "foldersFromFilesStructure"}
    assert provider["options"]["path"].startswith("/")


@pytest.mark.parametrize("query", ["rate(x[$__rate_interval])", 'x{a="${environment}"}'])
def test_substitution_leaves_plain_promql(query: str) -> None:
    """Grafana's variables in both spellings become values."""
    assert "$" not in substitute(query)
