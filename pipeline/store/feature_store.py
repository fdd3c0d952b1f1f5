"""The Feast adapter: each call runs featurestore/job.py in Feast's own environment and reads its one JSON answer.

Feast 0.67 cannot live in the project's environment (it caps pandas below 3), so nothing here imports it: a call
is `build/feast-venv/bin/python featurestore/job.py COMMAND --repo REPO [--config YAML] ...` (FEAST_PYTHON points
at another interpreter). Frames go through Parquet files in a temporary folder. Errors are FeatureStoreError with
the job's exit code: 2 bad definitions or input, 3 the infrastructure (no Feast environment, the store down).
Messages never carry a secret: connection strings are redacted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from api.release.redact import redact as _redact_uri
from pipeline.core.errors import ConfigError, DataError, PipelineError

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "featurestore" / "job.py"
DEFAULT_PYTHON = ROOT / "build" / "feast-venv" / "bin" / "python"
# Per command, at most this long (materializing every customer takes seconds; this only bounds a hang).
TIMEOUT_S = {"materialize": 3600.0, "historical": 1800.0, "apply": 600.0, "describe": 300.0, "online": 300.0}
TIMESTAMP_SUFFIX = "__ts"

_PASSWORD = re.compile(r"(?i)(password\s*[=:]\s*)[^,\s'\"]+")


def redact(text: object) -> str:
    """URI user-info and Feast's Redis `password=...` option replaced by ***."""
    return _PASSWORD.sub(r"\g<1>***", _redact_uri(text))


class FeatureStoreError(PipelineError):
    """A feature-store job failed; `exit_code` 2: bad definitions or input, 3: the infrastructure.

    A PipelineError, so the CLI exits with that code whichever stage called the adapter.
    """

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(redact(message))
        self.exit_code = exit_code


@dataclass(frozen=True)
class FeatureView:
    """A feature view of a service: its name and (feature, Feast dtype) pairs in order."""

    name: str
    features: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ServiceDescription:
    """A feature service as the registry holds it, and the hash of the definitions it came from."""

    service: str
    entity_field: str
    views: tuple[FeatureView, ...]
    definitions_hash: str  # sha256 of the definition files' and the configuration's bytes

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature, in the views' order."""
        return tuple(name for view in self.views for name, _ in view.features)


def feast_python() -> Path:
    """The interpreter of Feast's environment: FEAST_PYTHON, else build/feast-venv (the one place it is read)."""
    configured = os.environ.get("FEAST_PYTHON")
    return Path(configured) if configured else DEFAULT_PYTHON


def run_job(command: str, repo: Path, args: list[str], config: Path | None = None) -> dict[str, Any]:
    """Run one job command; its JSON answer, or FeatureStoreError with the job's exit code."""
    python = feast_python()
    if not python.is_file():
        raise FeatureStoreError(f"Feast environment missing: {python} does not exist (`make feast` builds it)", 3)
    argv = [str(python), str(JOB), command, "--repo", str(Path(repo).resolve())]
    if config is not None:
        argv += ["--config", str(Path(config).resolve())]
    argv += args
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # the project's modules must not shadow the Feast environment's
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=TIMEOUT_S.get(command, 600.0), env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise FeatureStoreError(
            f"feature store {command} did not finish within {TIMEOUT_S[command]:.0f} s", 3
        ) from None
    except OSError as exc:
        raise FeatureStoreError(f"cannot run the Feast environment {python}: {exc.strerror or exc}", 3) from None
    answer = _answer(done.stdout)
    if done.returncode == 0 and answer is not None and "error" not in answer:
        return answer
    if answer is not None and "error" in answer and done.returncode in (2, 3):
        raise FeatureStoreError(f"feature store {command}: {answer['error']}", done.returncode)
    tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
    raise FeatureStoreError(f"feature store {command} failed (exit {done.returncode}): {tail[0][:500]}", 3)


def _answer(stdout: str) -> dict[str, Any] | None:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _options(service: str | None = None) -> list[str]:
    return ["--service", service] if service is not None else []


def _config(repo: Path) -> dict[str, Any]:
    config = repo / "feature_store.yaml"
    try:
        loaded = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{config}: cannot read it ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config}: not a mapping")
    return loaded


def project(repo: Path) -> str:
    """The Feast project the repo's feature_store.yaml names (the API's FEAST_PROJECT must be the same)."""
    name = _config(repo).get("project")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{repo / 'feature_store.yaml'}: no project named")
    return name


def online_url(repo: Path, given: str = "") -> str:
    """The FEATURE_STORE_URL an API serving this repo's versions reads: `given` if set, else the repo's SQLite file.

    Read from feature_store.yaml without Feast. Only the embedded SQLite store can be named from the file alone: a
    Redis connection string is Feast's own syntax and may hold a password, so team scale sets FEATURE_STORE_URL.
    """
    if given:
        return given
    config = repo / "feature_store.yaml"
    online = _config(repo).get("online_store") or {}
    kind = online.get("type", "sqlite") if isinstance(online, dict) else online
    if kind != "sqlite":
        raise ConfigError(f"{config}: the online store is {kind!r}; set FEATURE_STORE_URL for the API to read it")
    path = Path(str(online.get("path", "data/online.db"))) if isinstance(online, dict) else Path("data/online.db")
    return "sqlite://" + str((repo / path).resolve() if not path.is_absolute() else path)


def read_entities(path: Path) -> pd.DataFrame:
    """The entity frame (customerID, event_timestamp, the label) that training and the skew check read."""
    if not path.is_file():
        raise DataError(f"entity frame {path} does not exist (`python -m pipeline features build` writes it)")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"entity frame {path} is not a readable Parquet file: {exc}") from None


def describe(repo: Path, service: str, *, config: Path | None = None) -> ServiceDescription:
    """The service's views and features (with Feast dtypes) as applied, and the definitions' hash."""
    answer = run_job("describe", repo, _options(service), config)
    views = tuple(FeatureView(v["name"], tuple((str(n), str(t)) for n, t in v["features"])) for v in answer["views"])
    return ServiceDescription(answer["service"], answer["entity_field"], views, answer["definitions_hash"])


def apply(repo: Path, *, config: Path | None = None) -> dict[str, Any]:
    """Register the repo's definitions; {project, views, services, entities, definitions_hash}."""
    return run_job("apply", repo, [], config)


def materialize(
    repo: Path, *, full: bool = False, end: datetime | None = None, config: Path | None = None
) -> dict[str, Any]:
    """Load offline rows into the online store: new ones since the last run (or all up to `end` with `full`).

    {"views": [...], "rows": N, "start": iso, "end": iso, "view_rows": {view: N}, "seconds", "rows_per_s"}:
    rows counts the source rows inside the window each view loaded.
    """
    args = ["--full"] if full else []
    if end is not None:
        moment = end if end.tzinfo else end.replace(tzinfo=UTC)
        args += ["--end", moment.isoformat()]
    return run_job("materialize", repo, args, config)


# Column dtypes as the CSV path gives them.
_DTYPES = {"Int64": "int64", "Int32": "int64", "Float64": "float64", "Float32": "float64", "Bool": "bool"}


def _typed(frame: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """Features as the CSV path types them: int64/float64 where every value is there, text as str."""
    columns = {}
    for name, feast_type in dtypes.items():
        if name not in frame.columns:
            continue
        column = frame[name]
        wanted = _DTYPES.get(feast_type)
        if wanted is None:
            columns[name] = column.astype("str")  # a missing value stays missing
        elif column.notna().all():
            columns[name] = column.astype(wanted)
        elif wanted == "int64":
            columns[name] = column.astype("Int64")  # an absent value stays absent
        else:
            columns[name] = column.astype("float64")
    return frame.assign(**columns)


def historical(repo: Path, service: str, entities: pd.DataFrame, *, config: Path | None = None) -> pd.DataFrame:
    """`entities`' rows, same order, with the service's features as of each row's event_timestamp.

    Extra columns (the label) are kept. FeatureStoreError (2) when Feast dropped rows (an entity row earlier
    than the entity's first feature row, or an unknown entity) or added some.
    """
    with tempfile.TemporaryDirectory(prefix="feast-historical-") as folder:
        source, out = Path(folder) / "entities.parquet", Path(folder) / "features.parquet"
        entities.reset_index(drop=True).to_parquet(source, index=False)
        answer = run_job("historical", repo, [*_options(service), "--entities", str(source), "--out", str(out)], config)
        frame = pd.read_parquet(out)
    if len(frame) != len(entities):  # the job checks this too; a frame of other length must never pass
        raise FeatureStoreError(f"historical retrieval returned {len(frame)} rows for {len(entities)}", 2)
    return _typed(frame, answer["dtypes"])


def online_reference(
    repo: Path, service: str, ids: list[str] | tuple[str, ...], *, config: Path | None = None
) -> pd.DataFrame:
    """Feast's own online read: one row per id, in order; each feature and its `<feature>__ts` (epoch seconds).

    An unknown id has no values (None) and timestamp 0.
    """
    ids = [str(i) for i in ids]
    if not ids:
        raise FeatureStoreError("online_reference: no ids", 2)
    if any("," in i for i in ids):
        raise FeatureStoreError("online_reference: an id contains a comma", 2)
    answer = run_job("online", repo, [*_options(service), "--ids", ",".join(ids)], config)
    columns: dict[str, list[Any]] = answer["columns"]
    key = answer["entity_field"]
    names = [n for n in answer["features"] if n in columns]
    order = [key, *names, *(n + TIMESTAMP_SUFFIX for n in names if n + TIMESTAMP_SUFFIX in columns)]
    frame = pd.DataFrame({name: columns[name] for name in order})
    return _typed(frame, answer["dtypes"])
