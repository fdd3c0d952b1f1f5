"""/invocations input that MLflow's functions should never see, refused by record and field.

MLflow's scoring-server functions decide what a request means and how it is
predicted, but they were not written for hostile input: a 5,000-digit integer
escapes their JSON parser, a list as a value or a duplicated column fails deep
in pandas with a traceback, `Infinity` is predicted, a parquet body is decoded
before anything counts its rows. So the full path reads the body first (JSON: api/model/invocation_json.py, CSV:
api/model/invocation_csv.py; what both share is here):

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

import re
import sys
from collections.abc import Hashable
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


def seen_before(seen: set[H], name: H) -> bool:
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
