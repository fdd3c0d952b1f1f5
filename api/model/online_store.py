"""Features by customer id: Feast's online store read directly (no Feast in the API), and the lookup both doors use.

A version trained from a feature service carries its record (feature_service.json, and the same in MLmodel's
metadata, which the artifact digest covers): the service, its entity field, its views with their features, Feast
dtypes and max ages, and whether stale values are refused or served with a warning (`ServiceSpec`).

Feast 0.67's layouts (entity_key_serialization_version 3), read as Feast writes them:
- entity key = <u32 keys=1> <u32 type=STRING(2)> <u32 len> join key name, <u32 type=STRING> <u32 len> id
  (little-endian);
- SQLite: table `<project>_<view>` (entity_key BLOB, feature_name TEXT, value BLOB ValueProto, event_ts, created_ts);
- Redis: one hash per customer at `entity key + project`, fields mmh3_32(`<view>:<feature>`) (4 bytes, little-endian)
  -> ValueProto, and `_ts:<view>` -> google.protobuf.Timestamp.
Values are decoded with a minimal descriptor of feast.types.Value (its scalar fields, Feast's field numbers) built
here at import, in a pool of its own. Ids are untrusted: bounded, a small character set, and they reach a store only
as a bytes parameter (a SQLite `?`, a Redis key), never as query text.

A store that fails to answer (refused, reset, silent past the lookup timeout, an error for the whole request) raises
StoreUnavailable (answered 503); it is then treated as down, without being asked, for RETRY_S: a store that hangs
holds up at most one request per RETRY_S. A read that answered, however slowly, is served; no free connection within
the timeout is a 503 `busy` for that request only. A stored value that cannot be read (corrupt bytes, a type other
than its Feast dtype, a non-finite number, a bad event time, a key of the wrong Redis type) is that record's
`unreadable_features`, never the store's failure.
"""

from __future__ import annotations

import math
import re
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

import mmh3
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from api.model.columns import Columns
from api.model.schema import FeatureSpec, RequestError
from api.release.redact import redact

# --- Feast's ValueProto, without Feast -------------------------------------------------------------------------------

# feast/types/Value.proto's scalar members of `oneof val` (name, field number, protobuf type), as Feast numbers them.
_T = descriptor_pb2.FieldDescriptorProto
VALUE_FIELDS = (
    ("bytes_val", 1, _T.TYPE_BYTES),
    ("string_val", 2, _T.TYPE_STRING),
    ("int32_val", 3, _T.TYPE_INT32),
    ("int64_val", 4, _T.TYPE_INT64),
    ("double_val", 5, _T.TYPE_DOUBLE),
    ("float_val", 6, _T.TYPE_FLOAT),
    ("bool_val", 7, _T.TYPE_BOOL),
    ("unix_timestamp_val", 8, _T.TYPE_INT64),
    ("null_val", 19, _T.TYPE_ENUM),
)
# The Feast dtypes (as feature_service.json names them) whose values are one of those scalars: the members each
# may be stored as (an integer is read for a float dtype: it is exact for the values Feast writes).
INTEGERS = ("int32_val", "int64_val")
DTYPE_FIELDS = {
    "String": ("string_val",),
    "Int32": INTEGERS,
    "Int64": INTEGERS,
    "Float32": ("float_val", "double_val", *INTEGERS),
    "Float64": ("double_val", "float_val", *INTEGERS),
    "Bool": ("bool_val",),
    "Bytes": ("bytes_val",),
    "UnixTimestamp": ("unix_timestamp_val",),
}
SCALAR_DTYPES = frozenset(DTYPE_FIELDS)


def _value_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="feast_value_minimal.proto", package="feast.types", syntax="proto3")
    null = file.enum_type.add(name="Null")
    null.value.add(name="NULL", number=0)
    message = file.message_type.add(name="Value")
    message.oneof_decl.add(name="val")
    for name, number, kind in VALUE_FIELDS:
        field = message.field.add(name=name, number=number, type=kind, label=_T.LABEL_OPTIONAL, oneof_index=0)
        if kind == _T.TYPE_ENUM:
            field.type_name = ".feast.types.Null"
    pool = descriptor_pool.DescriptorPool()  # its own pool: nothing else named feast.types.Value can clash
    return message_factory.GetMessageClass(pool.Add(file).message_types_by_name["Value"])


Value = _value_class()


class Unreadable(ValueError):
    """A stored value this reader cannot serve (corrupt, a list or a map, not its dtype, not finite, a bad time).

    A row holds the exception itself in place of such a value: that feature's problem for that record.
    """


def decode_value(raw: bytes, dtype: str | None = None) -> object:
    """A ValueProto's scalar (None for a null or an unset value); Unreadable when it cannot be served as `dtype`."""
    try:
        value = Value.FromString(raw)
    except (DecodeError, TypeError):  # corrupt bytes, a string_val that is not UTF-8; SQLite text or a number
        raise Unreadable("a stored value that is not a readable Feast value") from None
    kind = value.WhichOneof("val")
    if kind is None:
        if raw:  # bytes, yet no member this descriptor knows: a list, a map, a type added later
            raise Unreadable("a stored value of a type the API does not read")
        return None
    if kind == "null_val":
        return None
    if dtype is not None and kind not in DTYPE_FIELDS.get(dtype, ()):
        raise Unreadable(f"a stored {kind} where its dtype is {dtype}")
    scalar = getattr(value, kind)
    if kind in ("float_val", "double_val") and not math.isfinite(scalar):
        raise Unreadable(f"a stored {scalar} (not a finite number)")
    return scalar


def stored_value(raw: bytes | None, dtype: str) -> object:
    """decode_value, or the Unreadable naming why not (None for a stored SQL NULL)."""
    if raw is None:
        return None
    try:
        return decode_value(raw, dtype)
    except Unreadable as exc:
        return exc


def decode_timestamp(raw: bytes) -> datetime:
    """A google.protobuf.Timestamp's bytes as an aware UTC datetime; Unreadable when it is not one."""
    try:
        stamp = Timestamp.FromString(raw)
        return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC)
    except (DecodeError, ValueError, OverflowError, OSError):
        raise Unreadable("a stored event time that is not a readable timestamp") from None


# --- Entity ids -------------------------------------------------------------------------------------------------------

MAX_ID_LENGTH = 64
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
STRING_TYPE = 2  # feast.types.ValueType.STRING


def id_problem(value: object) -> str | None:
    """Why `value` cannot name a customer (None: it can): a string of 1-64 of A-Z a-z 0-9 _ . : -."""
    if value is None:
        return "has no id"
    if not isinstance(value, str):
        return f"the id must be a string, got {type(value).__name__}"
    if len(value) > MAX_ID_LENGTH:
        return f"the id is {len(value)} characters long (at most {MAX_ID_LENGTH})"
    if ID_PATTERN.fullmatch(value) is None:
        return f"the id may hold only letters, digits and _ . : - (at most {MAX_ID_LENGTH})"
    return None


def entity_key(join_key: str, entity_id: str) -> bytes:
    """Feast's serialized entity key (version 3) for one STRING join key: the bytes both stores are keyed by."""
    name, value = join_key.encode(), entity_id.encode()
    return b"".join(
        (struct.pack("<III", 1, STRING_TYPE, len(name)), name, struct.pack("<II", STRING_TYPE, len(value)), value)
    )


def redis_field(view: str, feature: str) -> bytes:
    """The Redis hash field of a feature: mmh3_32 of `<view>:<feature>`, unsigned, as 4 little-endian bytes."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


# --- A version's feature service --------------------------------------------------------------------------------------

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # a project or view name that may name a SQLite table
SERVICE_FILE = "feature_service.json"
METADATA_KEY = "feature_service"  # the same record in MLmodel's metadata


class BadService(ValueError):
    """A feature service record the API cannot serve from (named in the version's load failure)."""


@dataclass(frozen=True)
class View:
    """One feature view of the service: its features (name, Feast dtype) and the oldest value served, in seconds."""

    name: str
    features: tuple[tuple[str, str], ...]
    max_age_s: float


@dataclass(frozen=True)
class ServiceSpec:
    """feature_service.json: what a version trained from a feature service reads at serving time."""

    service: str
    entity_field: str
    views: tuple[View, ...]
    stale: str  # refuse | warn
    definitions_hash: str = ""

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature, in the views' order."""
        return tuple(name for view in self.views for name, _ in view.features)

    @classmethod
    def parse(cls, record: object) -> ServiceSpec:
        """The record as written at training; BadService names what is wrong with it."""
        if not isinstance(record, Mapping):
            raise BadService(f"feature service record must be an object, got {type(record).__name__}")
        try:
            views = tuple(
                View(
                    str(v["name"]),
                    tuple((str(name), str(dtype)) for name, dtype in v["features"]),
                    float(v["max_age_s"]),
                )
                for v in record["views"]
            )
            spec = cls(
                str(record["service"]),
                str(record["entity_field"]),
                views,
                str(record.get("stale", "refuse")),
                str(record.get("definitions_hash", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadService(f"feature service record is malformed: {exc!r}") from None
        if spec.stale not in ("refuse", "warn"):
            raise BadService(f"feature service {spec.service!r}: stale must be refuse or warn, got {spec.stale!r}")
        for view in spec.views:
            if IDENTIFIER.fullmatch(view.name) is None:
                raise BadService(f"feature service {spec.service!r}: view name {view.name!r} is not an identifier")
            if not view.max_age_s > 0:
                raise BadService(f"feature service {spec.service!r}: view {view.name!r} has no positive max_age_s")
            odd = [f"{n} ({t})" for n, t in view.features if t not in SCALAR_DTYPES]
            if odd:
                raise BadService(f"feature service {spec.service!r}: the API reads no value of feature(s) {odd}")
        if len(set(spec.feature_names)) != len(spec.feature_names):
            raise BadService(f"feature service {spec.service!r} names a feature twice")
        return spec


# --- The stores -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewRow:
    """One customer's row of one view: each feature's stored value, and the oldest event time among them.

    Absent features are not in `values`; an unreadable one is its Unreadable. event_ts None: no time can be read
    (every value is then Unreadable).
    """

    values: dict[str, object]
    event_ts: datetime | None


Rows = dict[str, dict[str, ViewRow]]  # view -> id -> its row (ids with no row in the view absent)


class StoreUnavailable(Exception):
    """The online store cannot answer this request: answered 503 with `reason`, counted by it.

    `down`: the store failed to answer, so it is held down for Lookup.RETRY_S (False: this request only).
    """

    def __init__(self, reason: str, message: str, down: bool = True) -> None:
        super().__init__(message)
        self.reason, self.message, self.down = reason, message, down


UNAVAILABLE_REASONS = ("timeout", "unreachable", "error", "busy", "not_configured")


class OnlineStore(Protocol):
    """A Feast online store read directly."""

    description: str  # where, for messages (credentials never in it)

    def read(self, project: str, join_key: str, views: Sequence[View], ids: Sequence[str]) -> Rows:
        """Every view's row of every id; StoreUnavailable when the store fails to answer."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now."""
        ...

    def close(self) -> None:
        """Let go of connections."""
        ...


def unreadable_row(view: View, why: str) -> ViewRow:
    """A row none of whose values can be read (its time or its whole key is unreadable)."""
    return ViewRow({name: Unreadable(why) for name, _ in view.features}, None)


class SqliteStore:
    """Feast's SQLite online store, opened read-only (`mode=ro`): one connection per thread, a busy timeout."""

    BATCH = 500  # ids per query (SQLite's default limit on parameters is 32,766)

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path, self.timeout_s = path, timeout_s
        self.description = f"sqlite online store {path}"
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's, closed by close()
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            uri = f"file:{_uri_path(self.path)}?mode=ro"
            try:
                connection = sqlite3.connect(uri, uri=True, timeout=self.timeout_s, check_same_thread=False)
            except sqlite3.Error as exc:
                raise StoreUnavailable("unreachable", f"{self.description} cannot be opened: {exc}") from None
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def _query(self, query: str, parameters: Sequence[bytes]) -> list[Any]:
        try:
            return self._connection().execute(query, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            reason = "timeout" if "locked" in str(exc) or "busy" in str(exc) else "error"
            raise StoreUnavailable(reason, f"{self.description}: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreUnavailable("error", f"{self.description}: {exc}") from None

    def read(self, project: str, join_key: str, views: Sequence[View], ids: Sequence[str]) -> Rows:
        """One query per view and batch of ids; the id's key a BLOB parameter."""
        keys = {entity_key(join_key, i): i for i in ids}
        key_list = list(keys)
        rows: Rows = {}
        for view in views:
            table = f"{project}_{view.name}"
            if IDENTIFIER.fullmatch(table) is None:  # project and view names are settings, not clients': still checked
                raise StoreUnavailable("error", f"{table!r} cannot name a table")
            found: list[Any] = []
            for start in range(0, len(key_list), self.BATCH):
                chunk = key_list[start : start + self.BATCH]
                query = (
                    f'SELECT entity_key, feature_name, value, event_ts FROM "{table}" '  # the table name checked above
                    f"WHERE entity_key IN ({','.join('?' * len(chunk))})"
                )
                found += self._query(query, chunk)
            rows[view.name] = _sqlite_rows(view, keys, found)
        return rows

    def ping(self) -> None:
        """A trivial query on the connection (opening the file if needed)."""
        self._query("SELECT 1 FROM sqlite_master LIMIT 1", ())

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
        self._local = threading.local()


def _sqlite_rows(view: View, keys: Mapping[bytes, str], found: Iterable[Any]) -> dict[str, ViewRow]:
    """One view's (entity_key, feature_name, value, event_ts) rows by id; a row's time is its oldest value's."""
    dtypes = dict(view.features)
    values: dict[str, dict[str, object]] = {}
    stamps: dict[str, list[datetime]] = {}
    for key, feature, value, event_ts in found:
        dtype = dtypes.get(feature)
        if dtype is None:
            continue
        entity = keys[bytes(key)]
        stamps.setdefault(entity, [])
        try:
            stamps[entity].append(_sqlite_time(event_ts))
            values.setdefault(entity, {})[feature] = stored_value(value, dtype)
        except Unreadable as exc:
            values.setdefault(entity, {})[feature] = exc
    return {entity: ViewRow(values[entity], min(stamps[entity], default=None)) for entity in values}


class RedisStore:
    """Feast's Redis online store: one HMGET per customer (pipelined), a small pool, connect/read timeouts."""

    def __init__(self, url: str, timeout_s: float, max_connections: int = 4) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.timeout_s = timeout_s
        self._errors = (redis.exceptions.RedisError, OSError)
        self._timeouts = (redis.exceptions.TimeoutError, TimeoutError)
        self._connection_errors = (redis.exceptions.ConnectionError, ConnectionError)
        try:  # the URL may hold a password: neither its text nor a parser's message quoting it goes any further
            self.description = _redis_where(redis.connection.parse_url(url))
            # Blocking: never a connection past the bound (the slots below keep a read from waiting on the pool).
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),  # no retry: the timeout is the whole budget
            )
        except Exception:
            raise ValueError(
                "FEATURE_STORE_URL cannot be read as a redis URL (redis://[:password@]host:port/db; a password with "
                "characters other than letters and digits percent-encoded); its text is not repeated here"
            ) from None
        self.client = redis.Redis(connection_pool=pool)
        self._slots = threading.BoundedSemaphore(max_connections)  # one per pooled connection
        self._fields: dict[tuple[View, ...], list[bytes]] = {}

    def _hashed(self, views: Sequence[View]) -> list[bytes]:
        """Every view's feature fields, then each view's `_ts:<view>`, cached by the views themselves."""
        key = tuple(views)
        fields = self._fields.get(key)
        if fields is None:
            fields = [redis_field(v.name, f) for v in views for f, _ in v.features]
            fields += [f"_ts:{v.name}".encode() for v in views]
            if len(self._fields) >= 64:  # versions come and go: the cache stays small
                self._fields.clear()
            self._fields[key] = fields
        return fields

    def _ask(self, call: Any, what: str) -> Any:
        """`call()` on a free connection; StoreUnavailable (busy: for this request only) naming how it failed."""
        if not self._slots.acquire(timeout=self.timeout_s):
            raise StoreUnavailable("busy", f"{self.description}: no free connection within the timeout", down=False)
        try:
            return call()
        except self._timeouts:
            raise StoreUnavailable(
                "timeout", f"{self.description} did not answer {what} within {self.timeout_s * 1000:.0f} ms"
            ) from None
        except self._connection_errors as exc:
            raise StoreUnavailable("unreachable", f"{self.description} is unreachable: {redact(exc)}") from None
        except self._errors as exc:
            raise StoreUnavailable("error", f"{self.description}: {redact(exc)}") from None
        finally:
            self._slots.release()

    def read(self, project: str, join_key: str, views: Sequence[View], ids: Sequence[str]) -> Rows:
        """HMGET of every view's feature fields and `_ts:<view>` per id, in one round trip."""
        fields = self._hashed(views)
        suffix = project.encode()

        def hmgets() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for entity in ids:
                pipe.hmget(entity_key(join_key, entity) + suffix, fields)  # type: ignore[arg-type]
            return pipe.execute(raise_on_error=False)  # a key's own error reply comes back in its place

        answers = self._ask(hmgets, "a read")
        rows: Rows = {view.name: {} for view in views}
        for entity, answer in zip(ids, answers, strict=True):
            if isinstance(answer, Exception):
                if not str(answer).startswith("WRONGTYPE"):  # not the key's problem: the request's
                    raise StoreUnavailable("error", f"{self.description}: {redact(answer)}")
                for view in views:
                    rows[view.name][entity] = unreadable_row(view, "its key holds no Feast hash")
                continue
            for view, row in _redis_rows(views, answer):
                if row is not None:
                    rows[view.name][entity] = row
        return rows

    def ping(self) -> None:
        """PING within the timeout."""
        self._ask(self.client.ping, "a ping")

    def close(self) -> None:
        """Disconnect the pool's connections."""
        self.client.connection_pool.disconnect()


def _redis_rows(views: Sequence[View], answer: Sequence[bytes | None]) -> Iterable[tuple[View, ViewRow | None]]:
    """One customer's HMGET answer (every feature field, then every view's time) as each view's row."""
    stamps_at = sum(len(v.features) for v in views)
    at = 0
    for number, view in enumerate(views):
        stamp, width = answer[stamps_at + number], len(view.features)
        raw_values = answer[at : at + width]
        at += width
        if stamp is None:
            yield view, None
            continue
        try:
            event_ts: datetime | None = decode_timestamp(stamp)
        except Unreadable as exc:
            yield view, unreadable_row(view, str(exc))
            continue
        values = {
            name: stored_value(raw, dtype)
            for (name, dtype), raw in zip(view.features, raw_values, strict=True)
            if raw is not None
        }
        yield view, ViewRow(values, event_ts)


def _redis_where(options: Mapping[str, object]) -> str:
    """The store as messages name it: host, port and db as redis-py parsed them, never the URL's text."""
    db = int(cast(int, options.get("db", 0)))
    if "path" in options:
        return f"redis online store at unix socket {options['path']} db {db}"
    return f"redis online store at {options.get('host', 'localhost')}:{int(cast(int, options.get('port', 6379)))}/{db}"


def open_store(url: str, timeout_s: float) -> OnlineStore:
    """The store FEATURE_STORE_URL names: `redis://[:password@]host:port/db` (or rediss://), `sqlite:///abs/path`."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        raise ValueError("FEATURE_STORE_URL is not a URL (its text is not repeated: it may hold a password)") from None
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, timeout_s)
    if scheme == "sqlite":
        path = unquote(url.removeprefix("sqlite://"))
        if not path.startswith("/"):
            raise ValueError(f"FEATURE_STORE_URL={redact(url)!r}: a sqlite URL names an absolute path (sqlite:///...)")
        return SqliteStore(path, timeout_s)
    shown = scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme) else "?"
    raise ValueError(f"FEATURE_STORE_URL (scheme {shown!r}) must start with redis://, rediss:// or sqlite:///")


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _sqlite_time(value: object) -> datetime:
    """Feast's event_ts column (a naive UTC datetime, stored by sqlite3 as ISO text) as an aware datetime.

    Unreadable for a NULL, text that is no time, a number out of range.
    """
    try:
        if isinstance(value, datetime):
            stamp = value
        elif isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        else:
            stamp = datetime.fromisoformat(value.decode() if isinstance(value, bytes) else str(value))
    except (ValueError, OverflowError, OSError):
        raise Unreadable(f"a stored event time that is not a time: {_quote(value)}") from None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


# --- The lookup -------------------------------------------------------------------------------------------------------


class _Absent:
    """A feature a record did not give: the lookup fetches it by the record's id."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True, slots=True)
class Outcome:
    """One record's lookup that could not serve (or served with a warning)."""

    record: int
    entity_id: object
    reason: str  # invalid_id | unknown_customer | missing_features | unreadable_features | stale_features
    message: str
    missing: tuple[str, ...] = ()
    stale: Mapping[str, float] | None = None  # feature -> its value's age in seconds (negative: in the future)
    unreadable: tuple[str, ...] = ()  # features whose stored value cannot be read

    def problem(self, entity_field: str) -> dict[str, object]:
        """As one entry of an answer's `detail` (api.model.schema.Problem's keys, and the lookup's)."""
        entry: dict[str, object] = {
            "loc": ["records", self.record, entity_field],
            "record": self.record,
            "field": entity_field,
            "message": self.message,
            "reason": self.reason,
            "id": self.entity_id,
        }
        if self.missing:
            entry["missing_features"] = list(self.missing)
        if self.unreadable:
            entry["unreadable_features"] = list(self.unreadable)
        if self.stale:
            entry["stale_features"] = dict(self.stale)
        return entry


def merged_missing(outcomes: Iterable[Outcome], order: Sequence[str], unreadable: bool = False) -> list[str]:
    """Every feature some record lacks (unreadable: whose stored value some record cannot read), in `order`."""
    named = {name for outcome in outcomes for name in (outcome.unreadable if unreadable else outcome.missing)}
    return [name for name in order if name in named]


def age_text(seconds: float) -> str:
    """An age for a message: seconds, or days when longer than two."""
    return f"{seconds / 86400:.1f} days" if seconds >= 172800 else f"{seconds:.0f} s"


def _quote(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def shown_id(value: object) -> object:
    """The id as an answer repeats it: a valid id whole, anything else as a short quoted prefix."""
    return value if id_problem(value) is None else _quote(value)


def check_ids(ids: Sequence[object], field: str, records: Sequence[int]) -> tuple[list[str], list[Outcome]]:
    """The valid ids among the records needing a lookup, and an Outcome for each record whose id is refused."""
    valid: list[str] = []
    refused: list[Outcome] = []
    for record in records:
        value = ids[record] if ids else None
        problem = id_problem(value)
        if problem is None:
            valid.append(str(value))
        else:
            text = f"record {record}: field {field!r}: {problem}" + (f", got {_quote(value)}" if value else "")
            refused.append(Outcome(record, shown_id(value), "invalid_id", text))
    return valid, refused


class Lookup:
    """The feature lookup of a worker: the store (None: FEATURE_STORE_URL unset), its health, the project."""

    RETRY_S = 0.5  # after a failure the store is not asked again for this long: requests are answered 503 at once
    CHECK_S = 2.0  # /ready asks the store itself at most this often; any read in between tells it as much
    FUTURE_S = 60.0  # a value stamped later than this ahead of now is stale: a clock or a writer is wrong

    def __init__(self, store: OnlineStore | None, project: str, timeout_s: float) -> None:
        self.store, self.project, self.timeout_s = store, project, timeout_s
        self.down: StoreUnavailable | None = None
        self.down_at = 0.0
        self.checked_at = 0.0

    def read(self, spec: ServiceSpec, views: Sequence[View], ids: Sequence[str]) -> Rows:
        """The rows of `ids`; StoreUnavailable at once while the store is held down."""
        if self.store is None:
            raise StoreUnavailable(
                "not_configured", "this version reads its features from a feature store: FEATURE_STORE_URL is not set"
            )
        now = time.monotonic()
        if self.down is not None and now - self.down_at < self.RETRY_S:
            raise self.down
        try:
            rows = self.store.read(self.project, spec.entity_field, views, ids)
        except StoreUnavailable as exc:
            if exc.down:  # it failed to answer; `busy` is this request's alone
                self.down, self.down_at = exc, time.monotonic()
            raise
        self.down, self.checked_at = None, time.monotonic()
        return rows

    def health(self) -> StoreUnavailable | None:
        """Why the store cannot serve now (None: it can), asking it at most every CHECK_S."""
        if self.store is None:
            return StoreUnavailable("not_configured", "FEATURE_STORE_URL is not set")
        now = time.monotonic()
        if self.down is not None and now - self.down_at < self.RETRY_S:
            return self.down
        if self.down is None and now - self.checked_at < self.CHECK_S:
            return None
        try:
            self.store.ping()
        except StoreUnavailable as exc:
            if not exc.down:  # every connection busy answering reads: up
                return None
            self.down, self.down_at = exc, time.monotonic()
            return exc
        self.down, self.checked_at = None, time.monotonic()
        return None

    def complete(self, plan: Plan, columns: Columns) -> tuple[Columns, list[dict[str, object]], int]:
        """(columns with what records left ABSENT read by their ids, warnings of stale values served, records read).

        FeatureLookupError (a 4xx naming each record's problem) when any record's id is refused, its customer
        unknown, a feature absent or unreadable, or a value older than its view's max age (stale: refuse);
        StoreUnavailable (503).
        """
        first = columns.get(plan.fetched[0].name) if plan.fetched else None
        if first is None or not isinstance(first, list):  # a float array: every record gave its numbers
            return columns, [], 0
        records = [i for i, value in enumerate(first) if value is ABSENT]
        if not records:
            return columns, [], 0
        spec, field = plan.spec, plan.spec.entity_field
        ids = columns.get(field)
        valid, outcomes = check_ids(ids if isinstance(ids, list) else [], field, records)
        rows = self.read(spec, plan.views, list(dict.fromkeys(valid))) if valid else {}
        now = datetime.now(UTC)
        filled = {f.name: list(columns[f.name]) for f in plan.fetched}
        warnings: list[dict[str, object]] = []
        refused_ids = {o.record for o in outcomes}
        for record in records:
            if record in refused_ids:
                continue
            entity = ids[record]  # type: ignore[index]  # checked: a valid id
            outcome, warning = self._one(plan, rows, record, entity, now, filled)
            if outcome is not None:
                outcomes.append(outcome)
            if warning is not None:
                warnings.append(warning.problem(field) | {"warning": warning.message})
        if outcomes:
            raise FeatureLookupError(sorted(outcomes, key=lambda o: o.record), field, spec.feature_names, len(first))
        return {**columns, **filled}, warnings, len(records)

    @staticmethod
    def _one(
        plan: Plan, rows: Rows, record: int, entity: str, now: datetime, filled: dict[str, list[object]]
    ) -> tuple[Outcome | None, Outcome | None]:
        """One record's values written into `filled`; its refusal, or the warning it is served with."""
        view_rows = [(view, rows.get(view.name, {}).get(entity)) for view in plan.views]
        if all(row is None for _, row in view_rows):
            names = tuple(f.name for f in plan.fetched)
            message = (
                f"record {record}: customer {entity!r} is not in the feature store: missing features {list(names)}"
            )
            return Outcome(record, entity, "unknown_customer", message, names), None
        missing: list[str] = []
        unreadable: list[str] = []
        stale: dict[str, float] = {}
        for view, row in view_rows:
            for spec in plan.by_view[view.name]:
                value = _as_request(ABSENT if row is None else row.values.get(spec.name, ABSENT), spec)
                if value is _UNREADABLE:
                    unreadable.append(spec.name)
                elif value is ABSENT or (value is None and spec.required):
                    missing.append(spec.name)
                else:
                    filled[spec.name][record] = value
            age = None if row is None or row.event_ts is None else (now - row.event_ts).total_seconds()
            if age is not None and (age > view.max_age_s or age < -Lookup.FUTURE_S):
                stale |= {spec.name: round(age, 3) for spec in plan.by_view[view.name]}
        if missing or unreadable:
            return _refused(plan, record, entity, missing, unreadable), None
        if stale:
            outcome = Outcome(record, entity, "stale_features", _stale_text(record, entity, stale), stale=stale)
            return (outcome, None) if plan.spec.stale == "refuse" else (None, outcome)
        return None, None


def _refused(plan: Plan, record: int, entity: str, missing: list[str], unreadable: list[str]) -> Outcome:
    """A record lacking features, or whose stored values cannot be read (`unreadable_features`: not the client's)."""
    order = [f.name for f in plan.fetched]
    missing.sort(key=order.index)
    unreadable.sort(key=order.index)
    if unreadable:
        message = f"record {record}: customer {entity!r}: the feature store holds unreadable value(s) of {unreadable}"
        reason = "unreadable_features"
    else:
        message = f"record {record}: customer {entity!r} lacks feature(s) {missing} in the feature store"
        reason = "missing_features"
    return Outcome(record, entity, reason, message, tuple(missing), unreadable=tuple(unreadable))


def _stale_text(record: int, entity: str, stale: Mapping[str, float]) -> str:
    """Why a record's values are stale: past their view's max age, or stamped in the future."""
    soonest, oldest = min(stale.values()), max(stale.values())
    which = f"record {record}: customer {entity!r}: feature(s) {list(stale)}"
    if soonest < 0:
        return f"{which} are stamped {age_text(-soonest)} in the future"
    return f"{which} are {age_text(oldest)} old, past their view's max age"


class FeatureLookupError(RequestError):
    """Records whose features could not be served: 404 when every record of the request names an unknown customer.

    Else 422. The body names the first MAX_DETAIL records' problems and how many more there were (`truncated`).
    """

    MAX_DETAIL = 50

    def __init__(self, outcomes: list[Outcome], entity_field: str, order: Sequence[str], records: int) -> None:
        self.outcomes, self.entity_field = outcomes, entity_field
        self.counts = Counter(o.reason for o in outcomes)  # reason -> records: what metrics count
        self.missing = merged_missing(outcomes, order)
        self.unreadable = merged_missing(outcomes, order, unreadable=True)
        self.truncated = max(0, len(outcomes) - self.MAX_DETAIL)
        status = 404 if len(outcomes) == records and set(self.counts) == {"unknown_customer"} else 422
        shown = [o.problem(entity_field) for o in outcomes[: self.MAX_DETAIL]]
        super().__init__(shown, status)  # type: ignore[arg-type]

    def answer(self) -> dict[str, object]:
        """The error body: problems, every missing (and unreadable) feature in the service's order, `truncated`."""
        body = {**super().answer(), "missing_features": self.missing}
        if self.unreadable:
            body["unreadable_features"] = self.unreadable
        if self.truncated:
            body["truncated"] = self.truncated
        return body


@dataclass(frozen=True)
class Plan:
    """What a version reads from the store: its service, the model features the service gives, by view."""

    spec: ServiceSpec
    fetched: tuple[FeatureSpec, ...]  # the model's inputs the service provides, in the service's order
    views: tuple[View, ...]  # the service's views that give any of them
    by_view: Mapping[str, tuple[FeatureSpec, ...]]
    request_time: tuple[FeatureSpec, ...]  # the model's inputs a record must carry itself

    @classmethod
    def of(cls, spec: ServiceSpec, features: Sequence[FeatureSpec]) -> Plan:
        """The plan of a version whose inputs are `features`."""
        inputs = {f.name: f for f in features}
        by_view = {view.name: tuple(inputs[name] for name, _ in view.features if name in inputs) for view in spec.views}
        views = tuple(view for view in spec.views if by_view[view.name])
        fetched = tuple(f for view in views for f in by_view[view.name])
        given = {f.name for f in fetched}
        return cls(spec, fetched, views, by_view, tuple(f for f in features if f.name not in given))


_UNREADABLE: Any = object()


def _as_request(value: object, spec: FeatureSpec) -> object:
    """A stored value as a client would send it for this input (ABSENT as is; _UNREADABLE: it cannot be).

    Numeric: a finite number, or text of one (blank: None), never a boolean. Boolean: a boolean. Text: text, or an
    integer as the CSV path writes it (a Feast Int64 the model reads as a category).
    """
    if value is None or value is ABSENT:
        return value
    if isinstance(value, Unreadable):
        return _UNREADABLE
    if spec.numeric:
        return _as_number(value)
    if spec.type == "boolean":
        return value if isinstance(value, bool) else _UNREADABLE
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else _UNREADABLE


def _as_number(value: object) -> object:
    if isinstance(value, bool):
        return _UNREADABLE
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            text = (value.decode() if isinstance(value, bytes) else str(value)).strip()
            if not text:
                return None
            number = float(text)
        except ValueError:  # UnicodeDecodeError included
            return _UNREADABLE
    return number if math.isfinite(number) else _UNREADABLE
