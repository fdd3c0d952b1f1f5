"""The registry's state read for people: alias positions the ledger does not explain, and the status table (pure)."""

from __future__ import annotations

from typing import Any


def anomalies(
    aliases: dict[str, str], history: list[dict[str, Any]], versions: list[dict[str, Any]], production_alias: str
) -> list[dict[str, str | None]]:
    """Every alias position the ledger does not explain, and a production alias on an unreleased version.

    Pure: the ledger (its accepted entries: see api/release/ledger.py) explains an
    alias when its moves for that alias form a chain (each move starts where
    the previous one ended) ending where the alias points now.
    """
    found: list[dict[str, str | None]] = []
    for alias in sorted(set(aliases) | {m["alias"] for m in history}):
        moves = [m for m in history if m["alias"] == alias]
        previous = None
        for move in moves:
            if move["from"] != previous:
                found.append(
                    {
                        "alias": alias,
                        "version": move["from"],
                        "kind": "unrecorded_move",
                        "detail": f"@{alias} was at {move['from'] or 'nothing'} before the move of {move['at']}, "
                        f"but the ledger last put it at {previous or 'nothing'}: a move outside the pipeline",
                    }
                )
            previous = move["to"] or None  # "": the alias was removed (the end of a rollout)
        now = aliases.get(alias)
        if now != previous:
            found.append(
                {
                    "alias": alias,
                    "version": now,
                    "kind": "unrecorded_move",
                    "detail": f"@{alias} points at {now or 'nothing'} but the ledger last put it at "
                    f"{previous or 'nothing'}: moved outside the pipeline",
                }
            )
    by_version = {v["version"]: v for v in versions}
    serving = aliases.get(production_alias)
    if serving in by_version and not (by_version[serving]["gate"] == by_version[serving]["smoke"] == "passed"):
        v = by_version[serving]
        found.append(
            {
                "alias": production_alias,
                "version": serving,
                "kind": "not_releasable",
                "detail": f"@{production_alias} points at {serving}, which has gate {v['gate']} and smoke {v['smoke']}",
            }
        )
    return found


def render_table(status: dict[str, Any], history_rows: int = 10) -> str:
    """A plain-text view of `collect`'s output."""
    if not status["versions"]:
        return f"model {status['model']}: no versions registered yet\n"
    lines = [f"model {status['model']}"]
    lines.append("aliases: " + (", ".join(f"@{a} -> {v}" for a, v in status["aliases"].items()) or "none"))
    lines.append("")
    flagged = {a["version"] for a in status.get("anomalies", [])}
    header = ("version", "gate", "smoke", "f1", "roc_auc", "aliases", "git sha", "artifact", "verdicts")
    rows = [
        (
            v["version"],
            v["gate"],
            v["smoke"],
            _num(v["metrics"].get("f1")),
            _num(v["metrics"].get("roc_auc")),
            ",".join(v["aliases"]) + (" ⚠" if v["version"] in flagged and v["aliases"] else ""),
            v["git_sha"][:10],
            v["artifact_digest"][:19],
            v["signed"],
        )
        for v in status["versions"]
    ]
    lines += _table(header, rows)
    published = [v for v in status["versions"] if v.get("image")]
    if published:
        lines += ["", "published images (pull by digest)"]
        lines += [f"  {v['version']}: {v['image']}" for v in published]
    canary = status.get("canary")
    if canary:
        state = f"{canary['mode']} {canary['weight']} %" if canary["mode"] == "canary" else canary["mode"]
        lines += ["", f"canary traffic: {state}, version {canary['version'] or '-'}, rollout {canary['rollout'] or '-'}"
                  + (f", until {canary['expires']}" if canary["expires"] else "")]  # fmt: skip
        if canary["refused"]:
            lines.append(f"  read as off by replicas ({canary['refused']}): {canary['problem']}")
    if status.get("canary_states", "").startswith("UNSIGNED"):
        lines += ["", f"⚠ {status['canary_states']}"]
    if status.get("anomalies"):
        lines += ["", "⚠ anomalies (alias positions the pipeline did not make):"]
        lines += [f"  - {a['detail']}" for a in status["anomalies"]]
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


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
    return [line.rstrip() for line in lines]
