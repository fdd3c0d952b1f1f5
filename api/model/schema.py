"""Request validation built at load time from the model's input schema."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired

import orjson
from pydantic import ConfigDict, StrictBool, StrictFloat, StrictStr, TypeAdapter, ValidationError
from typing_extensions import TypedDict

NUMERIC_TYPES = {"double", "float", "long", "integer"}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    type: str  # an MLflow column type: double, long, string, boolean, ...
    required: bool = True

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    @property
    def value_type(self) -> type:
        """What a client sends for this field: any JSON number, a boolean, or a string."""
        return float if self.numeric else bool if self.type == "boolean" else str


class RequestError(ValueError):
    """A client's mistake, with the problems named field by field."""

    def __init__(self, problems: list[dict], status: int = 422):
        self.problems = problems
        self.status = status
        super().__init__("; ".join(p["message"] for p in problems))

    def answer(self) -> dict:
        """The error body every route sends for it."""
        return {"detail": self.problems, "message": str(self)}


def _python_type(spec: FeatureSpec) -> Any:
    base = {float: StrictFloat, bool: StrictBool, str: StrictStr}[spec.value_type]
    return base if spec.required else NotRequired[base | None]


class RecordValidator:
    """Validates `{"records": [...]}` against the features, naming record and field on error."""

    def __init__(self, features: list[FeatureSpec], max_batch_size: int):
        self.features = features
        self.max_batch_size = max_batch_size
        record = TypedDict("Record", {f.name: _python_type(f) for f in features})  # type: ignore[misc]
        record.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[attr-defined]
        self._adapter = TypeAdapter(list[record])

    def validate(self, body: Any) -> list[dict]:
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
            return self._adapter.validate_python(records)
        except ValidationError as exc:
            raise RequestError([_from_pydantic(e) for e in exc.errors()[:50]]) from None

    def columns(self, records: list[dict]) -> dict[str, list]:
        """Column-wise values; a missing optional field is None."""
        return {f.name: [r.get(f.name) for r in records] for f in self.features}


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


def _problem(loc: tuple, message: str, record: int | None = None, field: str | None = None) -> dict:
    return {"loc": list(loc), "record": record, "field": field, "message": message}


def _from_pydantic(error: dict) -> dict:
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
