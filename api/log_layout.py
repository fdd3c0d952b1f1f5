"""The prediction log's layout: where segments live and what their columns are.

Shared by the API (which writes predictions and the labels POST /outcomes
takes) and the pipeline (`outcomes`, `quality`, `training-set`, which read
them and write labels). The root is a local folder or `s3://BUCKET/PREFIX`
(PREDICTION_LOG_URI); S3 is reached through pyarrow's own client, with the
endpoint of the team server's store (MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL).

    ROOT/predictions/MODEL/YYYY-MM-DD/HHMMSS.ffffff-REPLICA-SEQ.parquet
    ROOT/labels/SHA256.parquet   (named by content: the same labels fed twice are one object)

A segment is whole or absent: local files are written aside (a dot-name ending
.tmp, in the same folder) and renamed, S3 objects are one PUT. Readers take
only names ending .parquet.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

PREDICTIONS = "predictions"
LABELS = "labels"

# One row per answered record. features: the record's values as JSON, or for records read from a feature store
# by id, {"feature_service": NAME, "entity_id": ID} (the values are the store's, point in time).
PREDICTION_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("prediction_id", pa.string()),
        ("entity_id", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("role", pa.string()),  # production | canary | shadow
        ("score", pa.float64()),  # the positive class's probability (null: the model gives none)
        ("label", pa.string()),
        ("features", pa.string()),
    ]
)

# One row per outcome given: by prediction_id, or by entity_id and observed_at.
LABEL_SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("entity_id", pa.string()),
        ("observed_at", pa.timestamp("us", tz="UTC")),
        ("outcome", pa.string()),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("source", pa.string()),  # file:NAME | api
    ]
)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for a log root: a local folder or s3://BUCKET/PREFIX."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, object] = {}
        if endpoint:
            target = urlparse(endpoint)
            options = {"endpoint_override": target.netloc or target.path, "scheme": target.scheme or "https"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            options["region"] = region
        return pafs.S3FileSystem(**options), f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"prediction log: {parsed.scheme}:// is not supported (a local folder or s3://BUCKET/PREFIX)")
    return pafs.LocalFileSystem(), os.path.abspath(parsed.path if parsed.scheme == "file" else uri)


def prediction_segment(base: str, model: str, at: datetime, replica: str, seq: int) -> str:
    """The path of one flush's segment: ROOT/predictions/MODEL/YYYY-MM-DD/HHMMSS.ffffff-REPLICA-SEQ.parquet."""
    day, clock = at.strftime("%Y-%m-%d"), at.strftime("%H%M%S.%f")
    return f"{base}/{PREDICTIONS}/{_safe(model)}/{day}/{clock}-{_safe(replica)}-{seq:06d}.parquet"


def label_segment(base: str, digest: str) -> str:
    """The path of a labels segment named by the SHA-256 of its content: ROOT/labels/SHA256.parquet."""
    return f"{base}/{LABELS}/{digest}.parquet"


def _safe(part: str) -> str:
    """A name usable as one path component (a model or host name with odd characters: replaced by _).

    `.` and `..` name the folder itself and its parent: replaced by `_` and `__`, never a path step.
    """
    name = re.sub(r"[^A-Za-z0-9._-]", "_", part) or "_"
    return "_" * len(name) if name in (".", "..") else name


def label_digest(rows: Iterable[tuple[str | None, str | None, datetime | None, str | None]]) -> str:
    """SHA-256 naming a labels segment: its (prediction_id, entity_id, observed_at, outcome) rows, sorted.

    When and from where they were received is left out, so the same labels fed by file or posted to
    /outcomes, in any order, are one segment (pipeline/store/prediction_log.py's canonical_digest, the same bytes).
    """
    lines = sorted(
        json.dumps([pid, eid, None if at is None else at.astimezone(UTC).isoformat(), outcome])
        for pid, eid, at, outcome in rows
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
