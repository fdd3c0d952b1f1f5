"""/invocations JSON bodies read as MLflow reads them, every number and key checked (api/model/invocation_input.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from api.model.invocation_input import (
    FLOAT_MAX,
    FORMATS,
    INT_DIGITS,
    LLM_KEYS,
    MAX_COLUMNS,
    MAX_PROBLEMS,
    RECORD_FORMATS,
    Refusal,
    batch_limit,
    not_finite,
    problem,
    refuse,
    seen_before,
)
from api.model.schema import FeatureSpec, Problem, quote


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
        twice.names = list(dict.fromkeys(k for k, _ in items if seen_before(seen, k)))
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
        twice = dict.fromkeys(n for n in names if seen_before(seen, n))
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
