"""The registry's state as one JSON object (DESIGN.md) and as a table for people."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline import registry


def collect(client: MlflowClient, name: str) -> dict:
    """`{"model", "aliases", "versions", "history"}` as the CLI contract lists them."""
    model = registry.registered_model(client, name)
    aliases = {} if model is None else {alias: str(version) for alias, version in model.aliases.items()}
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions = []
    for mv in registry.versions(client, name):
        tags = mv.tags
        versions.append(
            {
                "version": str(mv.version),
                "run_id": mv.run_id,
                "metrics": {
                    k.removeprefix(registry.METRIC_PREFIX): float(v)
                    for k, v in tags.items()
                    if k.startswith(registry.METRIC_PREFIX)
                },
                "gate": tags.get("gate", "pending"),
                "smoke": tags.get("smoke", "pending"),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "git_sha": tags.get("git_sha", ""),
                "data_fingerprint": tags.get("data.fingerprint", ""),
                "smoke_target": tags.get("smoke.target", ""),
                "registered_at": mv.creation_timestamp,
            }
        )
    return {
        "model": name,
        "aliases": dict(sorted(aliases.items())),
        "versions": versions,
        "history": [] if model is None else registry.history_of(model.tags),
    }


def render_table(status: dict, history_rows: int = 10) -> str:
    """A plain-text view of `collect`'s output."""
    if not status["versions"]:
        return f"model {status['model']}: no versions registered yet\n"
    lines = [f"model {status['model']}"]
    lines.append("aliases: " + (", ".join(f"@{a} -> {v}" for a, v in status["aliases"].items()) or "none"))
    lines.append("")
    header = ("version", "gate", "smoke", "f1", "roc_auc", "aliases", "git sha")
    rows = [
        (
            v["version"],
            v["gate"],
            v["smoke"],
            _num(v["metrics"].get("f1")),
            _num(v["metrics"].get("roc_auc")),
            ",".join(v["aliases"]),
            v["git_sha"][:10],
        )
        for v in status["versions"]
    ]
    lines += _table(header, rows)
    moves = status["history"][-history_rows:]
    if moves:
        lines += ["", f"alias history (last {len(moves)} of {len(status['history'])})"]
        lines += _table(
            ("at", "alias", "from", "to", "by", "reason"),
            [(m["at"], m["alias"], m["from"] or "-", m["to"], m["by"], m["reason"]) for m in moves],
        )
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
    return [line.rstrip() for line in lines]
