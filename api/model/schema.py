"""Request validation built at load time from the model's input schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypeAlias, cast

import orjson
from pydantic import ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

NUMERIC_TYPES = {"double", "float", "long", "integer"}
# What a client sends for a field: a JSON number, a boolean or a string.
ValueType: TypeAlias = type[float] | type[bool] | type[str]


class Problem(TypedDict):
    """One thing wrong with a request, as answered: where (`loc`, and its record and field when known) and what."""

    loc: list[object]
    record: int | str | None  # a record's index; on /invocations, whatever key a malformed body put in its place
    field: object  # a feature's name; on /invocations, any column name a request gave
    message: str


@dataclass(frozen=True)
class FeatureSpec:
    """One input of the model's signature: its name, its MLflow type, and whether a request must give it."""

    name: str
    type: str  # an MLflow column type: double, long, string, boolean, ...
    required: bool = True

    @property
    def numeric(self) -> bool:
        """True for MLflow's number types: the value is cast to float64."""
        return self.type in NUMERIC_TYPES

    @property
    def value_type(self) -> ValueType:
        """What a client sends for this field: any JSON number, a boolean, or a string."""
        return float if self.numeric else bool if self.type == "boolean" else str


class RequestError(ValueError):
    """A client's mistake, with the problems named field by field."""

    def __init__(self, problems: list[Problem], status: int = 422) -> None:
        self.problems = problems
        self.status = status
        super().__init__("; ".join(p["message"] for p in problems))

    def answer(self) -> dict[str, object]:
        """The error body every route sends for it."""
        return {"detail": self.problems, "message": str(self)}


def _python_type(spec: FeatureSpec) -> Any:
    base = {float: StrictFloat, bool: StrictBool, str: StrictStr}[spec.value_type]
    return base if spec.required else NotRequired[base | None]


class RecordValidator:
    """Validates `{"records": [...]}` against the features, naming record and field on error."""

    def __init__(self, features: list[FeatureSpec], max_batch_size: int, entity_field: str | None = None) -> None:
        self.features = features
        self.max_batch_size = max_batch_size
        fields = {f.name: _python_type(f) for f in features}
        self.entity_field = entity_field if entity_field and entity_field not in fields else None
        if self.entity_field:  # the customer's id, never a feature: any JSON scalar, optional
            fields[self.entity_field] = NotRequired[StrictStr | StrictInt | StrictFloat | None]
        record = TypedDict("Record", fields)  # type: ignore[misc]
        record.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[attr-defined]
        self._adapter = TypeAdapter(list[record])

    def validate(self, body: Any) -> list[dict[str, object]]:
        """The records of a parsed /predict body, each checked; RequestError names every problem (up to 50)."""
        if not isinstance(body, dict) or set(body) != {"records"}:
            keys = list(body) if isinstance(body, dict) else type(body).__name__
            raise RequestError([_problem(("records",), f'body must be {{"records": [...]}}, got {quote(keys)}')])
        records = body["records"]
        if not isinstance(records, list):
            raise RequestError([_problem(("records",), f"records must be a list, got {type(records).__name__}")])
        if not records:
            raise RequestError([_problem(("records",), "records is empty: send at least one record")])
        if len(records) > self.max_batch_size:
            raise RequestError(
                [_problem(("records",), f"{len(records)} records exceed the batch limit of {self.max_batch_size}")]
            )
        try:
            # The record type is built at run time (statically it has no fields); it validates to plain dicts.
            return cast(list[dict[str, object]], self._adapter.validate_python(records))
        except ValidationError as exc:
            raise RequestError([_from_pydantic(e) for e in exc.errors()[:50]]) from None

    def columns(self, records: list[dict[str, object]]) -> dict[str, list[object]]:
        """Column-wise values; a missing optional field is None."""
        names = [f.name for f in self.features] + ([self.entity_field] if self.entity_field else [])
        return {name: [r.get(name) for r in records] for name in names}


def parse_json(raw: bytes) -> Any:
    """The request's JSON, or a 400 naming where it is malformed."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError([_problem(("body",), f"malformed JSON: {exc}")], status=400) from None


def quote(value: Any, limit: int = 40) -> str:
    """A short prefix of a bad value for an error message: answers never echo a whole payload."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _problem(loc: tuple[str | int, ...], message: str, record: int | None = None, field: str | None = None) -> Problem:
    return {"loc": list(loc), "record": record, "field": field, "message": message}


def _from_pydantic(error: ErrorDetails) -> Problem:
    loc = error["loc"]
    record = loc[0] if loc and isinstance(loc[0], int) else None
    field = str(loc[1]) if len(loc) > 1 else None
    what = {
        "missing": "is missing",
        "extra_forbidden": "is not a feature of this model",
    }.get(error["type"], f"{error['msg'].lower()}, got {quote(error.get('input'))}")
    where = f"record {record}" if record is not None else "records"
    message = f"{where}: field {field!r}: {what}" if field else f"{where}: {error['msg'].lower()}"
    return _problem(("records", *loc), message, record, field)
