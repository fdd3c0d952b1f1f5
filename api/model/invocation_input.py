"""/invocations input that MLflow's functions should never see, refused by record and field.

MLflow's scoring-server functions decide what a request means and how it is
predicted, but they were not written for hostile input: a 5,000-digit integer
escapes their JSON parser, a list as a value or a duplicated column fails deep
in pandas with a traceback, `Infinity` is predicted, a parquet body is decoded
before anything counts its rows. So the full path reads the body here first:

- the content type: JSON or CSV (UTF-8), anything else (parquet too) a 415
  before the body is parsed;
- JSON with Python's parser (MLflow's), every number checked as it is parsed
  (NaN, Infinity, 1e400 and integers beyond a double are refused) and every
  object checked for a key written twice;
- CSV with Python's csv module: UTF-8, no NUL, quotes closed, a unique header,
  every row as wide as the header, no infinite number in a numeric column;
- in every format: the batch limit, at most MAX_COLUMNS columns, and no list or
  object as a feature's value.

What passes goes to MLflow unchanged, so what it accepts is predicted as
`mlflow models serve` predicts it. What MLflow still refuses is explained here
(the first cell that is not a number, named) or its message made safe to show
(`safe_message`: first line, no exception class, no path, no traceback).

Missing values follow MLflow: JSON null, a blank CSV cell and the spellings
pandas reads as missing (`nan`, `NaN`, `NA`, `null`, ...) are one missing value,
which the model's imputers fill. A JSON `NaN` literal is refused: JSON has null.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, TypeVar, Unpack

from api.model.schema import FeatureSpec, Problem, RequestError, quote
from api.release.redact import plain_message, redact

if TYPE_CHECKING:
    import pandas as pd

JSON_TYPE, CSV_TYPE, PARQUET_TYPE = "application/json", "text/csv", "application/vnd.apache.parquet"
ACCEPTED_TYPES = (JSON_TYPE, CSV_TYPE)
FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
RECORD_FORMATS = ("dataframe_records", "inputs", "instances")
# MLflow sends anything with one of these keys down its LLM path, not the formats above.
LLM_KEYS = frozenset({"messages", "prompt", "input"})

# Columns a request may name, the model's and others MLflow would ignore: pandas
# took 26 s and 460 MB for a 1.7 MB CSV header of 200,000 names.
MAX_COLUMNS = 1000
MAX_PROBLEMS = 10  # named in one answer
FLOAT_MAX = sys.float_info.max
INT_DIGITS = 400  # an integer literal longer than this is beyond any double: never converted

BAD_REQUEST, INVALID_PARAMETER_VALUE = "BAD_REQUEST", "INVALID_PARAMETER_VALUE"  # MLflow's error codes
H = TypeVar("H", bound=Hashable)


class Refusal(RequestError):
    """A request /invocations refuses: its status, MLflow's error code, and the problems by record and field."""

    def __init__(self, problems: list[Problem], status: int = 400, error_code: str = BAD_REQUEST) -> None:
        super().__init__(problems[:MAX_PROBLEMS], status)
        self.error_code = error_code

    def answer(self) -> dict[str, object]:
        """MLflow's error shape without its stack trace."""
        return {"error_code": self.error_code, "message": str(self)}


class RefusalOptions(TypedDict, total=False):
    """What `refuse` passes on to Refusal besides the problem: its status and MLflow's error code."""

    status: int
    error_code: str


def problem(message: str, record: int | str | None = None, field: object = None) -> Problem:
    """One problem, worded as /predict words them: `record 3: field 'tenure': ...`."""
    where = "".join(
        (f"record {record}: " if record is not None else "", f"field {field!r}: " if field is not None else "")
    )
    loc = [x for x in (record, field) if x is not None]
    return {"loc": loc, "record": record, "field": field, "message": where + message}


def refuse(
    message: str, record: int | str | None = None, field: object = None, **kwargs: Unpack[RefusalOptions]
) -> Refusal:
    """A Refusal of one problem (`kwargs`: its status and error code, when not 400 and BAD_REQUEST)."""
    return Refusal([problem(message, record, field)], **kwargs)


def batch_limit(rows: int | str, limit: int) -> Refusal:
    """The Refusal of a batch over `limit`: `rows` records (a count, or words such as "more than 10")."""
    return refuse(f"{rows} records exceed the batch limit of {limit}", error_code=INVALID_PARAMETER_VALUE)


def _seen(seen: set[H], name: H) -> bool:
    """True when `name` is in `seen` already, else False with `name` added: picks out the names written twice."""
    if name in seen:
        return True
    seen.add(name)
    return False


# --- content type --------------------------------------------------------------------------------


def media_type(content_type: str) -> str:
    """JSON_TYPE or CSV_TYPE, else a 415 naming what is accepted (MLflow's rules, without parquet)."""
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    mime = mime.lower()
    if mime not in ACCEPTED_TYPES:
        note = ": this server does not read parquet" if mime == PARQUET_TYPE else ""
        raise refuse(
            f"content type {quote(mime)} is not accepted{note}; send application/json "
            "(dataframe_split, dataframe_records, inputs or instances) or text/csv, in UTF-8",
            status=415,
        )
    for parameter in filter(None, parameters):
        name, _, value = (p.strip() for p in parameter.partition("="))
        if name.lower() != "charset":
            raise refuse(f"content type parameter {quote(name)} is not accepted: only charset", status=415)
        if value.strip('"').lower() != "utf-8":
            raise refuse(f"charset {quote(value)} is not accepted: bodies are read as UTF-8", status=415)
    return mime


# --- numbers no model can take -------------------------------------------------------------------


def not_finite(text: str) -> str:
    """Why a number spelled `text` cannot be scored."""
    bare = text.strip().lstrip("+-").lower()
    if bare.startswith("nan"):
        return f"{quote(text)} is not a number: send null for a missing value"
    if bare.startswith("inf"):
        return f"{quote(text)} is not a finite number"
    return f"{quote(text)} is too large: |x| must be at most {FLOAT_MAX:.4g}"


class _Bad:
    """Where a JSON number no model can take was parsed: the walk names its record and field."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Duplicated(dict[str, object]):
    """A JSON object that wrote a key more than once (Python keeps the last value)."""

    __slots__ = ("names",)
    names: list[str]  # the keys written more than once, in order


# --- JSON ----------------------------------------------------------------------------------------


def read_json(body: bytes, features: list[FeatureSpec], limit: int) -> dict[str, object]:
    """The parsed request, checked; a Refusal naming the first problems otherwise."""
    marked: list[bool] = []  # set when a hook saw something the walk must locate

    def bad(text: str) -> _Bad:
        marked.append(True)
        return _Bad(text)

    def parse_float(text: str) -> float | _Bad:
        value = float(text)
        return value if -FLOAT_MAX <= value <= FLOAT_MAX else bad(text)  # 1e400 parses as inf

    def parse_int(text: str) -> int | _Bad:
        if len(text) > INT_DIGITS:  # int() refuses past 4,300 digits with an error nothing caught
            return bad(text)
        value = int(text)
        return value if -FLOAT_MAX <= value <= FLOAT_MAX else bad(text)

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        obj = dict(items)
        if len(obj) == len(items):
            return obj
        marked.append(True)
        seen: set[str] = set()
        twice = _Duplicated(obj)
        twice.names = list(dict.fromkeys(k for k, _ in items if _seen(seen, k)))
        return twice

    try:
        # json.loads on bytes, as MLflow parses: the same encodings are accepted (UTF-8, -16, -32).
        request = json.loads(
            body, parse_float=parse_float, parse_int=parse_int, parse_constant=bad, object_pairs_hook=pairs
        )
    except json.JSONDecodeError as exc:
        raise refuse(f"malformed JSON: {exc.msg}: line {exc.lineno} column {exc.colno} (char {exc.pos})") from None
    except UnicodeDecodeError as exc:
        raise refuse(f"the JSON body is not {exc.encoding.upper()} text (byte {exc.start})") from None
    except RecursionError:
        raise refuse("the JSON body is nested too deeply") from None
    if not isinstance(request, dict):
        if marked:
            raise Refusal(_locate(request))
        raise refuse(
            f"the body must be a JSON object with exactly one of the keys {', '.join(FORMATS)}; got {_kind(request)}"
        )
    present = [key for key in FORMATS if key in request]
    if len(present) == 1:
        payload = request[present[0]]
        rows = _record_count(present[0], payload)
        if rows is not None and rows > limit:
            raise batch_limit(rows, limit)
    if marked:
        raise Refusal(_locate(request))
    if not LLM_KEYS.intersection(request) and len(present) != 1:
        raise refuse(
            f"the body must hold exactly one of the keys {', '.join(FORMATS)}; got {quote(list(request), 120)}"
        )
    if len(present) == 1:
        _check_table(_table(present[0], request[present[0]], features), features)
    return request


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    return {bool: "a boolean", str: "a string", type(None): "null"}.get(type(value), "a number")


def _record_count(fmt: str, payload: object) -> int | None:
    if isinstance(payload, list):
        return len(payload)
    if fmt == "dataframe_split" and isinstance(payload, dict) and isinstance(payload.get("data"), list):
        return len(payload["data"])
    if fmt in ("inputs", "instances") and isinstance(payload, dict):  # columns: {"tenure": [1, 2], ...}
        return max((len(v) for v in payload.values() if isinstance(v, list)), default=1)
    return None


@dataclass
class _Table:
    """A request's cells by column, for the model's features only: name -> values in record order."""

    where: str  # the format key, for messages about the table as a whole
    width: int  # columns named, the model's and others
    columns: dict[str, list[object]]


def _table(fmt: str, payload: object, features: list[FeatureSpec]) -> _Table | None:
    """The request as columns, when its shape is one pandas reads as a table; else MLflow words it."""
    wanted = [spec.name for spec in features]
    if fmt == "dataframe_split":
        if not isinstance(payload, dict):
            return None
        names, data = payload.get("columns"), payload.get("data")
        if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
            return None
        if names is None:  # pandas names the columns 0, 1, ...: MLflow says which inputs are missing
            return _Table(fmt, max(map(len, data), default=0), {})
        if not isinstance(names, list):
            return None
        if not all(isinstance(n, str | int | float | bool | type(None)) for n in names):
            raise refuse("dataframe_split: columns must be names (strings), not lists or objects")
        seen: set[object] = set()
        twice = dict.fromkeys(n for n in names if _seen(seen, n))
        if twice:
            raise Refusal([problem("appears more than once in dataframe_split's columns", field=n) for n in twice])
        for i, row in enumerate(data):
            if len(row) != len(names):
                raise refuse(f"{len(row)} values for {len(names)} columns", record=i)
        position = {name: j for j, name in enumerate(names)}
        columns = {name: [row[position[name]] for row in data] for name in wanted if name in position}
        return _Table(fmt, len(names), columns)
    if isinstance(payload, list):
        if payload and all(type(r) is dict for r in payload):
            names = set().union(*payload)
            columns = {name: [r.get(name) for r in payload] for name in wanted if name in names}
            return _Table(fmt, len(names), columns)
        if payload and all(type(r) is list for r in payload):  # a tensor: pandas names the columns 0, 1, ...
            return _Table(fmt, max(map(len, payload)), {})
        return None
    if isinstance(payload, dict) and fmt != "dataframe_records":  # inputs/instances as {"tenure": [1, 2], ...}
        lengths = {name: len(v) for name, v in payload.items() if isinstance(v, list)}
        if len(set(lengths.values())) > 1:
            short, long = min(lengths, key=lengths.__getitem__), max(lengths, key=lengths.__getitem__)
            raise refuse(
                f"{fmt}: field {long!r} has {lengths[long]} values, field {short!r} {lengths[short]}: "
                "send one value per record in every field"
            )
        columns = {name: (v if isinstance(v, list) else [v]) for name, v in payload.items() if name in wanted}
        return _Table(fmt, len(payload), columns)
    return None


def _check_table(table: _Table | None, features: list[FeatureSpec]) -> None:
    if table is None:
        return
    if table.width > MAX_COLUMNS:
        raise refuse(
            f"{table.where} names {table.width} columns: at most {MAX_COLUMNS} are read "
            f"(this model reads {len(features)})"
        )
    problems = []
    for spec in features:
        values = table.columns.get(spec.name)
        if values is None or not {list, dict} & set(map(type, values)):
            continue
        for record, value in enumerate(values):
            if type(value) in (list, dict):
                what = "a list" if type(value) is list else "an object"
                problems.append(problem(f"{what} is not a value: send one number or string", record, spec.name))
                if len(problems) == MAX_PROBLEMS:
                    raise Refusal(problems)
    if problems:
        raise Refusal(problems)


def _locate(request: object) -> list[Problem]:
    """Every marked number and duplicated key in document order, named by record and field where it has one."""
    problems: list[Problem] = []
    stack: list[tuple[tuple[str | int, ...], object]] = [((), request)]
    while stack and len(problems) < MAX_PROBLEMS:
        path, node = stack.pop()
        if isinstance(node, _Bad):
            problems.append(_at(request, path, not_finite(node.text)))
        elif isinstance(node, dict):
            if isinstance(node, _Duplicated):
                problems.extend(
                    _at(request, (*path, name), "is written more than once")
                    if path
                    else problem(f"key {name!r} is written more than once in the body")
                    for name in node.names
                )
            stack.extend(((*path, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))
    return problems[:MAX_PROBLEMS]


def _at(request: object, path: tuple[str | int, ...], message: str) -> Problem:
    """A problem at a path of the parsed body: `record 2: field 'tenure': ...`, else `at dataframe_split.index[3]`."""
    fmt = path[0] if path else None
    payload = request.get(fmt) if isinstance(request, dict) and fmt in FORMATS else None
    rest = path[1:]
    if fmt == "dataframe_split" and len(rest) >= 3 and rest[0] == "data" and isinstance(payload, dict):
        names = payload.get("columns")
        record, position = rest[1], rest[2]
        if isinstance(names, list) and isinstance(position, int) and position < len(names):
            return problem(message, record, names[position])
    elif fmt in RECORD_FORMATS and len(rest) >= 2 and isinstance(payload, list) and isinstance(rest[1], str):
        return problem(message, rest[0], rest[1])
    elif fmt in ("inputs", "instances") and rest and isinstance(payload, dict) and isinstance(rest[0], str):
        return problem(message, rest[1] if len(rest) > 1 and isinstance(rest[1], int) else None, rest[0])
    return problem(f"at {_dotted(path)}: {message}" if path else f"the body: {message}")


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return quote(text, 80).strip("'")


def explain_json(request: dict[str, object], features: list[FeatureSpec]) -> Refusal | None:
    """When MLflow refused the values of a request read_json passed: the first cells that are not numbers."""
    present = [key for key in FORMATS if key in request]
    if len(present) != 1:
        return None
    try:
        table = _table(present[0], request[present[0]], features)
    except Refusal as exc:
        return exc
    if table is None:
        return None
    problems = []
    for spec in features:
        if not spec.numeric:
            continue
        for record, value in enumerate(table.columns.get(spec.name, ())):
            if not _json_number(value):
                problems.append(problem(f"{quote(value)} is not a number", record, spec.name))
                break
    return Refusal(problems) if problems else None


def _json_number(value: object) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


# --- CSV -----------------------------------------------------------------------------------------

# The cells pandas' float parser takes (and the ones it reads as missing): used to name the cell it refused.
_PANDAS_NUMBER = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf|infinity)\s*", re.I)
_PANDAS_BOOLEAN = frozenset({"True", "TRUE", "true", "False", "FALSE", "false"})  # 1/0, in a column of only these
_PANDAS_MISSING = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip


@dataclass
class CsvTable:
    """A CSV request as read: its text (what MLflow parses), its header and its rows of cells."""

    text: str
    header: list[str]
    rows: list[list[str]]


def read_csv(body: bytes, features: list[FeatureSpec], limit: int) -> CsvTable:
    """The CSV text, its header and rows, checked; a Refusal naming the first problems otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"the CSV body is not UTF-8 text (byte {exc.start}): binary data is not CSV") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise refuse(f"line {line}: the CSV body holds a NUL character: binary data is not CSV")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        for row in reader:
            if not row:  # a blank line: pandas skips it
                continue
            if header is None:
                header = [row[0].removeprefix("\ufeff"), *row[1:]]  # pandas drops a byte-order mark
                _check_header(header, features)
                continue
            if len(rows) == limit:
                raise batch_limit(f"more than {limit}", limit)
            if len(row) != len(header):
                raise refuse(
                    f"line {reader.line_num} has {len(row)} fields where the header names {len(header)}", len(rows)
                )
            rows.append(row)
    except csv.Error as exc:
        why = "a quoted field is not closed" if "unexpected end of data" in str(exc) else safe_message(str(exc))
        raise refuse(f"line {reader.line_num}: malformed CSV: {why}") from None
    if header is None:
        raise refuse("the CSV body is empty: send a header row naming the columns, then one row per record")
    _check_csv_numbers(header, rows, features)
    return CsvTable(text, header, rows)


def _check_header(header: list[str], features: list[FeatureSpec]) -> None:
    if len(header) > MAX_COLUMNS:
        raise refuse(
            f"the CSV header names {len(header)} columns: at most {MAX_COLUMNS} are read "
            f"(this model reads {len(features)})"
        )
    seen: set[str] = set()
    twice = [name for name in header if _seen(seen, name)]
    if twice:
        raise Refusal(
            [problem("appears more than once in the CSV header", field=name) for name in dict.fromkeys(twice)]
        )


def _check_csv_numbers(header: list[str], rows: list[list[str]], features: list[FeatureSpec]) -> None:
    """Infinite numbers (`inf`, `-Infinity`, `1e400`) in numeric columns; `nan` is pandas' missing value."""
    position = {name: j for j, name in enumerate(header)}
    problems = []
    for spec in features:
        j = position.get(spec.name)
        if j is None or not spec.numeric:
            continue
        for record, row in enumerate(rows):
            try:
                value = float(row[j])
            except ValueError:
                continue  # not a number at all: pandas refuses it, explain_csv names it
            if math.isinf(value):
                problems.append(problem(not_finite(row[j]), record, spec.name))
                if len(problems) == MAX_PROBLEMS:
                    raise Refusal(problems)
    if problems:
        raise Refusal(problems)


def explain_csv(table: CsvTable, features: list[FeatureSpec]) -> Refusal | None:
    """When pandas refused a CSV read_csv passed: the first cell of each numeric column it cannot read."""
    position = {name: j for j, name in enumerate(table.header)}
    problems = []
    for spec in features:
        j = position.get(spec.name)
        if j is None or spec.type not in ("double", "float"):
            continue
        cells = [(record, row[j]) for record, row in enumerate(table.rows) if row[j] not in _PANDAS_MISSING]
        if cells and all(cell in _PANDAS_BOOLEAN for _, cell in cells):
            continue
        for record, cell in cells:
            if not _PANDAS_NUMBER.fullmatch(cell):
                problems.append(problem(f"{quote(cell)} is not a number", record, spec.name))
                break
    return Refusal(problems) if problems else None


# --- the frame MLflow built ----------------------------------------------------------------------


def refuse_infinite(frame: pd.DataFrame, features: list[FeatureSpec]) -> None:
    """The last check before predicting: no infinite value in a numeric column, however it was spelled."""
    import numpy as np

    problems = []
    for spec in features:
        if not spec.numeric or spec.name not in frame:
            continue
        values = frame[spec.name].to_numpy()
        if values.dtype.kind != "f":
            continue
        for record in np.flatnonzero(np.isinf(values))[:MAX_PROBLEMS]:
            problems.append(problem(not_finite(str(values[record])), int(record), spec.name))
    if problems:
        raise Refusal(problems)


# --- messages ------------------------------------------------------------------------------------

# ValueError, mlflow.exceptions.MlflowException, _csv.Error; not the word "Error" alone.
_QUALIFIED_CLASS = re.compile(r"\b(?:(?:[A-Za-z_]\w*\.)+\w*?|[A-Za-z_]\w*?)(?:Error|Exception|Warning)\b:?\s?")
_ERROR_LABEL = re.compile(r"\.?\s*\bError:\s*")
_PATH = re.compile(r"(?:\b[A-Za-z]:)?(?:[\\/][\w.@+~-]+){2,}[\\/]?")
_FILE_LINE = re.compile(r"\bFile \"[^\"]*\"(?:, line \d+)?")
FALLBACK = "the request could not be scored: check it against the model's input schema"


def safe_message(text: str, limit: int = 300) -> str:
    """A message fit for a client: its first line, credentials redacted, no traceback, exception class or path.

    api.release.redact.plain_message strips a leading `SomethingError: `; MLflow's messages also carry
    `Error: 'ValueError(...)'` in the middle, and files, which go here first.
    """
    lines = [line.strip() for line in redact(text).splitlines() if line.strip()]
    if not lines or lines[0].startswith("Traceback"):
        return FALLBACK
    line = _FILE_LINE.sub("", lines[0])
    line = _QUALIFIED_CLASS.sub("", line)
    line = _ERROR_LABEL.sub(": ", line)
    line = plain_message(_PATH.sub("…", line), limit).strip(" :")
    return line or FALLBACK
