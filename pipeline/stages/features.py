"""features build | apply | materialize: the feature store's data, definitions and online values.

build writes data/features/ (each view's Parquet file and the entity frame) from the CSV at data.path; apply
registers featurestore/repo's definitions; materialize loads the offline rows into the online store, only what is
new since the last run unless --full. Feast runs in its own environment (pipeline/store/feature_store.py); what
materialize loaded (views, rows, time range) goes to stderr, stdout (JSON) and the GitHub job summary.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.ci import github
from pipeline.ci.progress import say, stage
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.feature_data import default_times, write_feature_data

ACTIONS = ("build", "apply", "materialize")


def features_stage(
    params: Params,
    action: str,
    *,
    config: str | None = None,
    full: bool = False,
    end: str | None = None,
    snapshot: str | None = None,
    history: bool = False,
) -> str:
    """Run one action; returns its JSON answer (one line)."""
    if action == "build":
        answer = build(params, snapshot=_time(snapshot, "--snapshot") if snapshot else None, history=history)
    elif action == "apply":
        answer = apply(params, _config(config))
    elif action == "materialize":
        answer = materialize(params, _config(config), full=full, end=_time(end, "--end") if end else None)
    else:  # argparse's choices keep this out
        raise ConfigError(f"unknown features action {action!r} (one of {', '.join(ACTIONS)})")
    return json.dumps(answer, default=str)


def _config(config: str | None) -> Path | None:
    if config is None:
        return None
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"--config {config}: no such file")
    return path


def _time(text: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def build(params: Params, *, snapshot: datetime | None = None, history: bool = False) -> dict[str, Any]:
    """Write each view's file and the entity frame next to feature_store.entities, from data.path's CSV."""
    source = Path(params.data.path)
    if not source.is_file():
        raise DataError(f"data file {source} does not exist (`python -m pipeline make-data` writes it)")
    directory = Path(params.feature_store.entities).parent
    snapshot_at, observed = default_times()
    if snapshot is not None:
        snapshot_at, observed = snapshot, max(snapshot, observed)
    with stage("features", f"building the feature views' data from {source} into {directory}"):
        try:
            churn = pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"data file {source} is not a readable CSV: {str(exc).strip()}") from None
        written = write_feature_data(directory, churn, snapshot_at, observed, history=history, label=params.data.target)
        for name, path in written.files.items():
            say(f"  {path}: {written.rows[name]} rows")
    entities = written.files["entities"]
    if entities != Path(params.feature_store.entities):
        say(f"  note: the entity frame is {entities}; feature_store.entities names {params.feature_store.entities}")
    return {
        "files": {name: str(path) for name, path in written.files.items()},
        "rows": written.rows,
        "first": written.first.isoformat(),
        "last": written.last.isoformat(),
        "observed": written.observed.isoformat(),
    }


def apply(params: Params, config: Path | None = None) -> dict[str, Any]:
    """Register featurestore/repo's definitions (feature_store.repo)."""
    from pipeline.store import feature_store

    repo = Path(params.feature_store.repo)
    with stage("features", f"applying the definitions of {repo}"):
        answer = feature_store.apply(repo, config=config)
        views, services = ", ".join(answer["views"]), ", ".join(answer["services"])
        say(f"  project {answer['project']}: views {views}; services {services}")
        say(f"  definitions {answer['definitions_hash'][:12]}")
    return answer


def materialize(
    params: Params, config: Path | None = None, *, full: bool = False, end: datetime | None = None
) -> dict[str, Any]:
    """Load the offline rows into the online store; say (and summarise) what was loaded."""
    from pipeline.store import feature_store

    repo = Path(params.feature_store.repo)
    how = "everything" if full else "what is new"
    with stage("features", f"materializing {how} of {repo} into its online store"):
        answer = feature_store.materialize(repo, full=full, end=end, config=config)
        say(f"  {summary_line(answer)}")
    github.write_summary(summary_markdown(answer))
    return answer


def summary_line(answer: dict[str, Any]) -> str:
    """One line: how many rows of which views, over which time range."""
    per_view = answer.get("view_rows") or {}
    views = ", ".join(f"{v} {per_view[v]}" if v in per_view else v for v in answer["views"])
    speed = f", {answer['rows_per_s']:,.0f} rows/s" if answer.get("rows_per_s") else ""
    return f"{answer['rows']} rows ({views}) from {answer['start']} to {answer['end']}{speed}"


def summary_markdown(answer: dict[str, Any]) -> str:
    """The job summary: a table of views, rows and each view's window."""
    kind = "full" if answer.get("full") else "incremental"
    starts = answer.get("view_starts") or {}
    per_view = answer.get("view_rows") or {}
    lines = [
        f"### Feature store materialized ({kind}, {answer.get('online_store', 'online store')})",
        "",
        f"{answer['rows']} rows up to {answer['end']}.",
        "",
        "| view | rows | from | to |",
        "|---|---:|---|---|",
    ]
    for view in answer["views"]:
        lines.append(f"| {view} | {per_view.get(view, '')} | {starts.get(view, answer['start'])} | {answer['end']} |")
    return "\n".join(lines)
