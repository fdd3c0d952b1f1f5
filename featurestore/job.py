"""Feast work for the pipeline, run in Feast's own environment (build/feast-venv): one command, one JSON object.

    build/feast-venv/bin/python featurestore/job.py [--repo DIR] [--config YAML] COMMAND ...
      apply                                   register the repo's definitions (and create the online tables)
      materialize [--full] [--end ISO]        load the offline rows into the online store (incremental by default)
      describe --service S                    the service's views, features, dtypes and the definitions' hash
      historical --service S --entities IN.parquet --out OUT.parquet
                                              point-in-time features for each entity row, same rows, same order
      online --service S --ids a,b,c          Feast's own online read (reference for tests and the skew check)

stdout carries exactly one JSON object; Feast's own chatter goes to stderr. Exit 0, or 2 with {"error": ...} for
bad definitions or input, 3 for the infrastructure (the online store down, storage failing). Only the standard
library, feast and pandas (pyarrow comes with them): this file is not part of the project's own environment.
It lives outside the repo folder, which Feast scans for definitions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_REPO = HERE / "repo"
ROW = "__feast_job_row"  # the entity frame's row number while Feast holds it
EPOCH = datetime(1970, 1, 2, tzinfo=UTC)  # --full starts here ("epoch-ish": some stores dislike 0)


class JobError(Exception):
    """An answer with an exit code: 2 bad definitions or input, 3 infrastructure."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# Secrets never reach stdout: URI user-info, and Feast's Redis `password=` option.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s'\"]+@")
_PASSWORD = re.compile(r"(?i)(password\s*[=:]\s*)[^,\s'\"]+")


def redact(text: object) -> str:
    """The text without URI user-info or a `password=` value."""
    return _PASSWORD.sub(r"\g<1>***", _USERINFO.sub(r"\g<scheme>***@", str(text)))


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return redact(lines[0][:500] if lines else "")


# --- the store ------------------------------------------------------------------------------------------------


def open_store(repo: Path, config: Path | None) -> Any:
    """Feast's FeatureStore over `repo` with `config` (else FEAST_FS_YAML_FILE_PATH, else the repo's yaml)."""
    from feast import FeatureStore

    if not (repo / "churn_features.py").is_file() and not any(repo.glob("*.py")):
        raise JobError(f"{repo} holds no feature definitions")
    yaml = config or (
        Path(os.environ["FEAST_FS_YAML_FILE_PATH"]) if os.environ.get("FEAST_FS_YAML_FILE_PATH") else None
    )
    yaml = yaml or repo / "feature_store.yaml"
    if not yaml.is_file():
        raise JobError(f"no feature store configuration at {yaml}")
    try:
        return FeatureStore(repo_path=str(repo), fs_yaml_file=yaml)
    except Exception as exc:  # pydantic/Feast config errors: the file is wrong, not the infrastructure
        raise JobError(f"bad feature store configuration {yaml}: {_first_line(exc)}") from None


def config_file(repo: Path, config: Path | None) -> Path:
    """The feature_store.yaml in use."""
    if config:
        return config
    if os.environ.get("FEAST_FS_YAML_FILE_PATH"):
        return Path(os.environ["FEAST_FS_YAML_FILE_PATH"])
    return repo / "feature_store.yaml"


def definition_files(repo: Path) -> list[Path]:
    """The .py files Feast reads as definitions (its own .feastignore rules)."""
    from feast.repo_operations import get_repo_files

    return get_repo_files(repo)


def definitions_hash(repo: Path, config: Path | None) -> str:
    """sha256 over each definition file and the configuration, sorted by path: name, NUL, bytes, NUL each."""
    files = {str(p.relative_to(repo.resolve())): p for p in definition_files(repo)}
    yaml = config_file(repo, config)
    files[yaml.name] = yaml
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()


def service_views(store: Any, service: str) -> list[dict[str, Any]]:
    """[{name, entity_field, features: [[name, dtype]]}] of the service, in its order."""
    from feast.errors import FeastObjectNotFoundException

    try:
        feature_service = store.get_feature_service(service)
    except FeastObjectNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        hint = f" (services: {', '.join(known)})" if known else " (none applied: run `features apply`)"
        raise JobError(f"no feature service {service!r} in the registry{hint}") from None
    views = []
    for projection in feature_service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        keys = [column.name for column in view.entity_columns]
        views.append(
            {
                "name": projection.name_to_use(),
                "entity_field": keys[0] if keys else "",
                "features": [[f.name, str(f.dtype)] for f in projection.features],
            }
        )
    return views


# --- commands -------------------------------------------------------------------------------------------------


def cmd_apply(store: Any, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Register the definitions (as `feast apply`: removed objects are deleted) and create the online tables."""
    from feast.repo_operations import _get_repo_contents, apply_total_with_repo_instance

    # As `feast apply` does: Feast imports each definition file as a module named by its path from the cwd.
    os.chdir(repo)
    sys.path.insert(0, str(repo))
    try:
        contents = _get_repo_contents(repo, store.project, store.config)
    except SystemExit:  # Feast exits on a Project object that does not match feature_store.yaml
        raise JobError("the definitions' Project does not match feature_store.yaml's project") from None
    apply_total_with_repo_instance(store, store.project, store.registry, contents, skip_source_validation=False)
    return {
        "project": store.project,
        "views": sorted(v.name for v in store.list_feature_views()),
        "services": sorted(s.name for s in store.list_feature_services()),
        "entities": sorted(e.name for e in store.list_entities()),
        "definitions_hash": definitions_hash(repo, args.config),
    }


def _source_rows(store: Any, view: Any, start: datetime, end: datetime) -> int:
    """Rows of the view's source with start <= event_timestamp <= end (Feast's window, both ends included)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from feast.infra.offline_stores.file_source import FileSource

    source = view.batch_source
    uri = FileSource.get_uri_for_file_path(store.repo_path, source.path)
    filesystem, path = FileSource.create_filesystem_and_path(uri, source.file_options.s3_endpoint_override)
    table = pq.read_table(path, filesystem=filesystem, columns=[source.timestamp_field])
    stamps = table.column(0)
    if stamps.type.tz is None:
        stamps = pc.assume_timezone(stamps, "UTC")
    inside = pc.and_(pc.greater_equal(stamps, start), pc.less_equal(stamps, end))
    return int(pc.sum(inside).as_py() or 0)


def cmd_materialize(store: Any, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Incremental (since each view's last end) or --full (from EPOCH) up to --end; what it loaded."""
    end = _parse_time(args.end) if args.end else datetime.now(UTC)
    views = [v for v in store.list_feature_views() if v.online]
    if not views:
        raise JobError("no feature views applied: run `features apply` first")
    starts = {}
    for view in views:
        if args.full:
            starts[view.name] = EPOCH
        elif view.most_recent_end_time is not None:
            starts[view.name] = _aware(view.most_recent_end_time)
        else:  # Feast's own rule for a first incremental run
            starts[view.name] = end - (view.ttl or timedelta(weeks=52))
    rows = {v.name: _source_rows(store, v, min(starts[v.name], end), end) for v in views}
    began = time.perf_counter()
    if args.full:
        store.materialize(start_date=EPOCH, end_date=end)
    else:
        store.materialize_incremental(end_date=end)
    seconds = time.perf_counter() - began
    total = sum(rows.values())
    return {
        "views": [v.name for v in views],
        "rows": total,
        "view_rows": rows,
        "start": min(starts.values()).isoformat(),
        "end": end.isoformat(),
        "view_starts": {name: s.isoformat() for name, s in starts.items()},
        "full": bool(args.full),
        "seconds": round(seconds, 3),
        "rows_per_s": round(total / seconds, 1) if seconds > 0 and total else None,
        "online_store": store.config.online_store.type,
    }


def cmd_describe(store: Any, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The service's entity field, views and features with dtypes, and the definitions' hash."""
    views = service_views(store, args.service)
    fields = {v["entity_field"] for v in views}
    if len(fields) != 1:
        raise JobError(f"service {args.service!r} joins its views on different keys: {sorted(fields)}")
    return {
        "service": args.service,
        "entity_field": fields.pop(),
        "views": [{"name": v["name"], "features": v["features"]} for v in views],
        "definitions_hash": definitions_hash(repo, args.config),
    }


def cmd_historical(store: Any, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Point-in-time features for the entity frame's rows, written to --out in the frame's order; refuses a drop."""
    import pandas as pd

    views = service_views(store, args.service)
    key = views[0]["entity_field"]
    try:
        entities = pd.read_parquet(args.entities)
    except (OSError, ValueError) as exc:
        raise JobError(f"entity frame {args.entities} is not readable Parquet: {_first_line(exc)}") from None
    for column in (key, "event_timestamp"):
        if column not in entities.columns:
            raise JobError(f"the entity frame lacks {column!r}")
    features = [name for v in views for name, _ in v["features"]]
    clashing = sorted(set(features) & set(entities.columns))
    if clashing:
        raise JobError(f"the entity frame already has feature columns: {', '.join(clashing)}")
    if ROW in entities.columns:
        raise JobError(f"the entity frame has a column named {ROW}")
    stamps = pd.to_datetime(entities["event_timestamp"], utc=True, errors="coerce")
    if stamps.isna().any():
        raise JobError(f"{int(stamps.isna().sum())} entity rows have no valid event_timestamp")
    frame = entities.assign(event_timestamp=stamps, **{ROW: range(len(entities))})
    service = store.get_feature_service(args.service)
    began = time.perf_counter()
    result = store.get_historical_features(entity_df=frame, features=service).to_df()
    seconds = time.perf_counter() - began
    rows = result[ROW].to_numpy()
    if len(result) != len(frame) or len(set(rows.tolist())) != len(frame):
        missing = sorted(set(range(len(frame))) - set(rows.tolist()))
        extra = len(result) - (len(frame) - len(missing))
        parts = []
        if missing:
            example = frame.iloc[missing[0]]
            parts.append(
                f"dropped {len(missing)} of {len(frame)} entity rows (e.g. {example[key]!r} at "
                f"{example['event_timestamp'].isoformat()}: no feature row at or before that time)"
            )
        if extra > 0:
            parts.append(f"added {extra} rows (duplicate feature rows for one entity and time?)")
        raise JobError("historical retrieval " + " and ".join(parts))
    result = result.sort_values(ROW, kind="stable").reset_index(drop=True)
    ordered = result[[*entities.columns, *features]]
    ordered = ordered.assign(event_timestamp=result["event_timestamp"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ordered.to_parquet(out, index=False)
    return {
        "service": args.service,
        "rows": len(ordered),
        "features": features,
        "dtypes": {name: dtype for v in views for name, dtype in v["features"]},
        "out": str(out),
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(ordered) / seconds, 1) if seconds > 0 else None,
    }


def cmd_online(store: Any, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Feast's own online read of the ids: columns of values and `<feature>__ts` epoch seconds."""
    views = service_views(store, args.service)
    key = views[0]["entity_field"]
    ids = [i for i in args.ids.split(",") if i] if args.ids else []
    if not ids:
        raise JobError("no --ids given")
    service = store.get_feature_service(args.service)
    response = store.get_online_features(features=service, entity_rows=[{key: i} for i in ids])
    columns = response.to_dict(include_event_timestamps=True)
    return {
        "service": args.service,
        "entity_field": key,
        "features": [name for v in views for name, _ in v["features"]],
        "dtypes": {name: dtype for v in views for name, dtype in v["features"]},
        "columns": columns,
        "rows": len(ids),
    }


# --- plumbing -------------------------------------------------------------------------------------------------


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_time(text: str) -> datetime:
    try:
        return _aware(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise JobError(f"--end {text!r} is not an ISO 8601 time") from None


COMMANDS = {
    "apply": cmd_apply,
    "materialize": cmd_materialize,
    "describe": cmd_describe,
    "historical": cmd_historical,
    "online": cmd_online,
}


def parser() -> argparse.ArgumentParser:
    """The command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="the Feast repo folder")
    common.add_argument("--config", type=Path, help="a feature_store.yaml other than the repo's own")
    top = argparse.ArgumentParser(prog="featurestore/job.py", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("apply", parents=[common])
    p = sub.add_parser("materialize", parents=[common])
    p.add_argument("--full", action="store_true", help="everything up to --end, not only what is new")
    p.add_argument("--end", help="ISO 8601 (default: now)")
    p = sub.add_parser("describe", parents=[common])
    p.add_argument("--service", required=True)
    p = sub.add_parser("historical", parents=[common])
    p.add_argument("--service", required=True)
    p.add_argument("--entities", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("online", parents=[common])
    p.add_argument("--service", required=True)
    p.add_argument("--ids", required=True, help="comma-separated entity ids")
    return top


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for what Feast or its stores raised."""
    try:
        from feast.errors import FeastError
    except ImportError:  # pragma: no cover - Feast is this environment's reason to exist
        FeastError = ()  # type: ignore[assignment]
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if module.startswith("redis") or isinstance(exc, ConnectionError | TimeoutError):
        return 3, f"online store unreachable: {name}: {_first_line(exc)}"
    if isinstance(exc, FileNotFoundError):
        return 2, f"missing file {exc.filename or ''}: run `python -m pipeline features build` first".replace("  ", " ")
    if isinstance(exc, OSError):
        return 3, f"storage failed: {name}: {_first_line(exc)}"
    if module.startswith("sqlite3") and "locked" not in str(exc):
        return 3, f"online store failed: {name}: {_first_line(exc)}"
    if isinstance(exc, FeastError | ValueError | KeyError | TypeError | ImportError | SyntaxError | NameError):
        return 2, f"{name}: {_first_line(exc)}"
    return 3, f"{name}: {_first_line(exc)}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; print its JSON answer (or {"error"}); the exit code."""
    args = parser().parse_args(argv)
    repo = args.repo.resolve()
    for name in ("config", "entities", "out"):  # apply changes directory, as `feast apply` does
        if getattr(args, name, None):
            setattr(args, name, getattr(args, name).resolve())
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress; stdout is our one answer
            if not repo.is_dir():
                raise JobError(f"no feature repo at {repo}")
            store = open_store(repo, args.config)
            answer = COMMANDS[args.command](store, repo, args)
    except JobError as exc:
        code, message = exc.code, redact(str(exc))
    except Exception as exc:  # every failure becomes one JSON line and an exit code
        if os.environ.get("FEAST_JOB_DEBUG"):
            import traceback

            traceback.print_exc(file=sys.stderr)
        code, message = classify(exc)
    else:
        json.dump(answer, out, default=str)
        out.write("\n")
        return 0
    json.dump({"error": message, "exit_code": code}, out)
    out.write("\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
