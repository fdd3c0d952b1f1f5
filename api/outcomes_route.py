"""POST /outcomes: what became of predictions, written as one labels segment of the prediction log (api/log_layout.py).

    Authorization: Bearer $OUTCOMES_TOKEN
    {"outcomes": [{"prediction_id": "ID-0", "outcome": "Yes", "observed_at": "2026-01-31T12:00:00Z"},
                  {"entity_id": "7590-VHVEG", "observed_at": "2026-01-31T12:00:00Z", "outcome": "No"}]}

Each row names a prediction by id, or a customer (entity_id) with the time its
outcome was observed (ISO-8601; without a zone, UTC); `observed_at` is optional
with a prediction id, and never later than the time the post is received
plus FUTURE_SLACK (a clock ahead, or a typo, would pass every point-in-time
join's "before the outcome" test). At most MAX_ROWS rows; the body is held to MAX_BODY_BYTES
as every other. 401 without the token or with another; 503 naming what is not
configured (OUTCOMES_TOKEN, PREDICTION_LOG_URI) or the store that failed; 422
naming each bad row and its problem. The rows are written synchronously (in a
thread) as LABEL_SCHEMA rows, source "api", in a segment named by the SHA-256
of their canonical content (api/log_layout.py's label_digest: the rows sorted,
received_at and source left out): the same outcomes posted twice, or fed by
file with `pipeline outcomes`, are one object. 200 {"accepted": n, "segment": NAME}
only once the segment is durable (synced and renamed, or PUT).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from api.log_layout import LABEL_SCHEMA, filesystem, label_digest, label_segment
from api.prediction_log import write_atomically
from api.release.redact import redact

MAX_ROWS = 10_000
MAX_TEXT = 200  # characters of an id or an outcome
MAX_PROBLEMS = 50  # a 422 names at most this many rows
FUTURE_SLACK = timedelta(minutes=5)  # an observed_at may be this far past the time it is received (clock skew)
KEYS = frozenset(("prediction_id", "entity_id", "observed_at", "outcome"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One validated row."""

    prediction_id: str | None
    entity_id: str | None
    observed_at: datetime | None
    outcome: str

    def key(self) -> tuple[str, str, str, str]:
        """The row as text, for a canonical order (None as "")."""
        at = "" if self.observed_at is None else self.observed_at.isoformat()
        return (self.prediction_id or "", self.entity_id or "", at, self.outcome)


class Refused(Exception):
    """An answer other than 200: its status and body."""

    def __init__(self, status: int, body: dict[str, object]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def authorized(authorization: str | None, token: str | None, log_uri: str | None) -> None:
    """Refused 503 when the route cannot work (no token or no log configured), 401 when the caller is not the one."""
    if not token:
        raise Refused(503, {"detail": "POST /outcomes is off: OUTCOMES_TOKEN is not set"})
    presented = ""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        presented = value.strip() if scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise Refused(401, {"detail": "a bearer token (OUTCOMES_TOKEN) is required"})
    if not log_uri:
        raise Refused(503, {"detail": "POST /outcomes is off: PREDICTION_LOG_URI is not set"})


def parse(body: bytes, received: datetime | None = None) -> list[Outcome]:
    """The body's rows, validated; Refused 422 naming each bad row and its problem.

    `received`: when the body was received (default now), which no observed_at may pass by more than FUTURE_SLACK.
    """
    latest = (received or datetime.now(UTC)) + FUTURE_SLACK
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _unprocessable([(None, f"the body is not JSON: {exc}")]) from None
    if type(request) is not dict or set(request) != {"outcomes"} or type(request["outcomes"]) is not list:
        raise _unprocessable([(None, 'the body must be {"outcomes": [rows]}')])
    rows = request["outcomes"]
    if not rows:
        raise _unprocessable([(None, "outcomes is empty")])
    if len(rows) > MAX_ROWS:
        raise _unprocessable([(None, f"{len(rows)} rows exceed the limit of {MAX_ROWS}")])
    found: list[Outcome] = []
    problems: list[tuple[int | None, str]] = []
    for index, row in enumerate(rows):
        try:
            found.append(_row(row, latest))
        except ValueError as exc:
            problems.append((index, str(exc)))
            if len(problems) == MAX_PROBLEMS:
                break
    if problems:
        raise _unprocessable(problems)
    return found


def _row(row: Any, latest: datetime) -> Outcome:
    if type(row) is not dict:
        raise ValueError(f"a row must be an object, got {type(row).__name__}")
    odd = sorted(set(row) - KEYS)
    if odd:
        raise ValueError(f"unknown field(s) {', '.join(repr(k[:40]) for k in odd[:5])}")
    prediction_id, entity_id = _text(row, "prediction_id"), _text(row, "entity_id")
    outcome = _text(row, "outcome")
    if outcome is None:
        raise ValueError("outcome is required")
    observed_at = _time(row.get("observed_at"))
    if observed_at is not None and observed_at > latest:
        raise ValueError(
            f"observed_at {observed_at.isoformat()} is later than now ({(latest - FUTURE_SLACK).isoformat()}) plus "
            f"{FUTURE_SLACK.total_seconds() / 60:g} minutes: an outcome cannot be observed in the future"
        )
    if prediction_id is None and (entity_id is None or observed_at is None):
        raise ValueError("a row needs prediction_id, or entity_id and observed_at")
    return Outcome(prediction_id, entity_id, observed_at, outcome)


def _text(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if type(value) is not str or not value or len(value) > MAX_TEXT:
        raise ValueError(f"{key} must be a string of 1-{MAX_TEXT} characters")
    return value


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if type(value) is not str or len(value) > 64:
        raise ValueError("observed_at must be an ISO-8601 time, e.g. 2026-01-31T12:00:00Z")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"observed_at {value[:64]!r} is not an ISO-8601 time, e.g. 2026-01-31T12:00:00Z") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _unprocessable(problems: list[tuple[int | None, str]]) -> Refused:
    detail = [{"row": row, "message": f"row {row}: {m}" if row is not None else m} for row, m in problems]
    return Refused(422, {"detail": detail})


def segment_of(outcomes: list[Outcome]) -> tuple[str, list[Outcome]]:
    """(the labels' digest, as a file feed of the same labels has it: api/log_layout.py; the rows in order)."""
    digest = label_digest((o.prediction_id, o.entity_id, o.observed_at, o.outcome) for o in outcomes)
    return digest, sorted(outcomes, key=Outcome.key)


def write(uri: str, outcomes: list[Outcome], received_at: datetime | None = None) -> str:
    """Write the rows as one labels segment (kept as it is when the same rows were written before); its name."""
    fs, base = filesystem(uri)
    digest, ordered = segment_of(outcomes)
    path = label_segment(base, digest)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return path.rsplit("/", 1)[-1]
    received = received_at or datetime.now(UTC)
    table = pa.Table.from_pydict(
        {
            "prediction_id": [o.prediction_id for o in ordered],
            "entity_id": [o.entity_id for o in ordered],
            "observed_at": [o.observed_at for o in ordered],
            "outcome": [o.outcome for o in ordered],
            "received_at": [received] * len(ordered),
            "source": ["api"] * len(ordered),
        },
        schema=LABEL_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_atomically(fs, path, sink.getvalue().to_pybytes())
    return path.rsplit("/", 1)[-1]


async def answer(
    authorization: str | None, body: bytes, token: str | None, log_uri: str | None
) -> tuple[int, dict[str, object]]:
    """(status, JSON body) for one POST /outcomes."""
    received = datetime.now(UTC)
    try:
        authorized(authorization, token, log_uri)
        assert log_uri is not None  # for mypy: authorized says so
        outcomes = parse(body, received) if len(body) < 65536 else await asyncio.to_thread(parse, body, received)
        try:
            segment = await asyncio.to_thread(write, log_uri, outcomes, received)
        except Exception as exc:
            raise Refused(503, {"detail": redact(f"outcomes not written: {type(exc).__name__}: {exc}")}) from None
    except Refused as refused:
        return refused.status, refused.body
    return 200, {"accepted": len(outcomes), "segment": segment}
