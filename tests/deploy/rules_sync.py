"""Write deploy/prometheus/rules.yml's groups into the monitoring component's PrometheusRule.

    python -m tests.deploy.rules_sync

rules.yml is the one source: Prometheus (compose) reads it as is, and the
Prometheus operator reads the same groups from the PrometheusRule. test_k8s.py
fails while the committed PrometheusRule differs from what this writes.
"""

from __future__ import annotations

import yaml

from .tools import DEPLOY

RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_RULE = DEPLOY / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/rules.yml by `python -m tests.deploy.rules_sync`:
# edit rules.yml and run that, not this file (tests/deploy/test_k8s.py checks it).
"""


class _BlockStrings(yaml.SafeDumper):
    """A YAML dumper that writes multi-line strings (expressions, runbooks) as literal blocks."""


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    """Represent a string, as a literal block when it spans several lines."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_BlockStrings.add_representer(str, _string)


def render() -> str:
    """Return the PrometheusRule manifest that carries rules.yml's groups."""
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "churn-api"},
        "spec": {"groups": yaml.safe_load(RULES.read_text())["groups"]},
    }
    return HEADER + yaml.dump(manifest, Dumper=_BlockStrings, sort_keys=False, width=1000, allow_unicode=True)


def main() -> None:
    """Write the PrometheusRule."""
    PROMETHEUS_RULE.write_text(render())
    print(f"wrote {PROMETHEUS_RULE.relative_to(DEPLOY.parent)}")


if __name__ == "__main__":
    main()
