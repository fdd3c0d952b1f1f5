"""/invocations: the answers of `mlflow models serve`, faster, and closed to hostile input.

A well-formed JSON request (every column present with values of exactly the
schema's types, see api.model.fast_decoders) is parsed with orjson and predicted on the
compiled path: MLflow's enforcement would pass it through unchanged. Anything
else (CSV, params, nulls where MLflow decides, odd types, errors) is read and
checked by api.model.invocation_input, _json and _csv (content type, numbers, duplicated keys,
lists as values, CSV structure, the batch limit), then goes through MLflow's
own scoring-server functions, so what is accepted and how it is predicted stay
those of `mlflow models serve`. Every error is answered as MLflow's
`{"error_code", "message"}` without its stack trace, and every exception on
this path is caught: none is a 5xx, none shows a traceback, path or class name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
from mlflow.exceptions import MlflowException
from mlflow.models.utils import _enforce_schema
from mlflow.pyfunc import scoring_server

from api.model.columns import Columns
from api.model.invocation_csv import CsvTable, explain_csv, read_csv
from api.model.invocation_input import (
    BAD_REQUEST,
    CSV_TYPE,
    Refusal,
    batch_limit,
    media_type,
    problem,
    refuse,
    refuse_infinite,
    safe_message,
)
from api.model.invocation_json import explain_json, read_json
from api.model.loaded_model import LoadedModel

logger = logging.getLogger(__name__)

RECORD_KEYS = ("dataframe_records", "inputs", "instances")
# sklearn refusing the values it was given: a client's input, answered by name on both doors (422 on /predict).
UNSCORABLE = (ValueError, TypeError, OverflowError, FloatingPointError)
# MLflow's own words when a model fails on a frame it accepted.
UNEXPECTED = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized input "
    "Dataframe is compatible with the model for inference."
)
# Bodies from this size on have their colons counted with numpy: one C pass either way.
COUNT_WITH_NUMPY = 16 * 1024


class _PyfuncView:
    """Just enough of a PyFuncModel for scoring_server.invocations; keeps why it refused a frame."""

    def __init__(self, model: LoadedModel) -> None:
        self.metadata = model.mlflow_model
        self._model = model
        self.rows = 0
        self.labels: np.ndarray | None = None
        self.probabilities: list[float] | None = None
        self.columns: Columns | None = None  # the features of the frame MLflow enforced, for the live counts
        self.refusal: Refusal | None = None  # MLflow rewords whatever predict raises: this is the cause
        self.failed = False  # the model raised on values it accepted: the version's error, not the client's

    def predict(self, data: Any) -> np.ndarray:
        """The labels for `data`; a refusal is kept, since MLflow rewords whatever this raises.

        `data` is what MLflow parsed the body into: a frame, or a dict or list its schema enforcement makes one of.
        """
        try:
            return self._predict(data)
        except Refusal as exc:
            self.refusal = exc
            raise
        except MlflowException as exc:  # MLflow's schema enforcement: its message names the column
            self.refusal = Refusal([problem(safe_message(exc.message))], error_code=_client_code(exc))
            raise

    def _predict(self, data: Any) -> np.ndarray:
        model = self._model
        if len(data) > model.max_batch_size:
            raise batch_limit(len(data), model.max_batch_size)
        schema = self.metadata.get_input_schema()
        frame = _enforce_schema(data, schema) if schema is not None else data
        refuse_infinite(frame, model.features)
        self.rows = len(frame)
        try:
            self.labels, self.probabilities = model.predict_frame(frame)
            self.columns = {f.name: frame[f.name].tolist() for f in model.features if f.name in frame}
            return self.labels
        except UNSCORABLE as exc:  # e.g. beyond float32 for a tree model: named as /predict names it
            columns = {f.name: frame[f.name].tolist() for f in model.features if f.numeric}
            problems = model.unscorable(columns, exc).problems
            raise Refusal([{**p, "message": safe_message(p["message"])} for p in problems]) from None
        except Exception:
            self.failed = True
            raise


@dataclass(frozen=True)
class Scored:
    """One /invocations answer: its status, its text, the rows predicted; a 200's labels, probabilities, columns.

    `failed`: the model raised on values it accepted (answered as MLflow answers it, counted as the version's error).
    """

    status: int
    text: bytes | str
    rows: int
    labels: np.ndarray | None = None  # the model's labels, as predicted
    probabilities: list[float] | None = None  # the positive class's, as the live counts take them
    columns: Columns | None = None  # the features predicted on, as the live counts and a shadow copy take them
    failed: bool = False


@dataclass(frozen=True)
class FullRead:
    """A body read and checked for the full path (api.model.invocation_json or _csv), before MLflow scores it."""

    mime: str
    request: dict[str, object] | CsvTable
    data: dict[str, object] | str  # what MLflow's scoring function is handed


def score(model: LoadedModel, body: bytes, content_type: str) -> Scored:
    """The answer to one /invocations request."""
    return score_well_formed(model, body, content_type) or score_with_mlflow(model, body, content_type)


def single_key_json(body: bytes, content_type: str) -> tuple[str, Any] | None:
    """(key, payload) of a JSON body that is an object of one key, as MLflow's formats are; None otherwise."""
    if content_type.lower().replace(" ", "") not in ("application/json", "application/json;charset=utf-8"):
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(request) is not dict or len(request) != 1:
        return None
    ((key, payload),) = request.items()
    return key, payload


def well_formed_columns(model: LoadedModel, body: bytes, content_type: str) -> Columns | None:
    """The request's columns on the fast path (the customer's id too, when records carry it), or None."""
    found = single_key_json(body, content_type)
    if found is None:
        return None
    key, payload = found
    limit = model.max_batch_size
    if key == "dataframe_split":
        columns = model.invocation_types.from_split(payload, limit)
        keys = 1 + len(payload) if columns is not None else 0
    elif key in RECORD_KEYS:
        columns = model.invocation_types.from_records(payload, limit)
        keys = 1 + sum(map(len, payload)) if columns is not None else 0
    else:
        return None
    # orjson keeps the last of a key written twice. Every key is followed by a colon, so as many colons
    # as distinct keys proves none was; more (a colon inside a string too) and the full path decides.
    if columns is None or _colons(body) != keys:
        return None
    return columns


def predict_well_formed(model: LoadedModel, columns: Columns) -> Scored | None:
    """The answer for columns the fast path read, or None when the model refuses them (the full path names why).

    With the probabilities and columns the live counts take, as /predict counts the same records.
    """
    try:
        prediction = model.predict_columns(columns)
    except Exception:  # the model refused these values (or failed on them): the full path names why
        return None
    labels = np.asarray(prediction.labels, dtype=object)  # tolist() gives back the labels as predicted
    answer = orjson.dumps({"predictions": prediction.labels})
    return Scored(200, answer, len(labels), labels, prediction.probabilities, columns)


def score_well_formed(model: LoadedModel, body: bytes, content_type: str) -> Scored | None:
    """The answer on the fast path, or None when the request needs the full path."""
    columns = well_formed_columns(model, body, content_type)
    return None if columns is None else predict_well_formed(model, columns)


def _colons(body: bytes) -> int:
    if len(body) < COUNT_WITH_NUMPY:
        return body.count(b":")
    return int(np.count_nonzero(np.frombuffer(body, np.uint8) == ord(":")))


def read_full(model: LoadedModel, body: bytes, content_type: str) -> FullRead:
    """The body read and checked for MLflow's functions: a Refusal (or another exception) when it cannot be."""
    mime = media_type(content_type)
    if mime == CSV_TYPE:
        table = read_csv(body, model.features, model.max_batch_size)
        return FullRead(mime, table, table.text)
    request = read_json(body, model.features, model.max_batch_size)
    return FullRead(mime, request, request)


def score_with_mlflow(model: LoadedModel, body: bytes, content_type: str, read: FullRead | None = None) -> Scored:
    """Read and check the request (unless `read` already is), then MLflow's functions; every failure a 4xx."""
    view = _PyfuncView(model)
    scored = _score_with_mlflow(view, model, body, content_type, read)
    return replace(scored, rows=view.rows, failed=True) if view.failed else scored


def _score_with_mlflow(
    view: _PyfuncView, model: LoadedModel, body: bytes, content_type: str, read: FullRead | None
) -> Scored:
    request: dict[str, object] | CsvTable | None = None if read is None else read.request
    try:
        if read is None:
            read = read_full(model, body, content_type)
            request = read.request
        # scoring_server.invocations is unannotated in MLflow.
        result = scoring_server.invocations(read.data, read.mime, view, view.metadata.get_input_schema())
    except Refusal as exc:
        return _refused(exc)
    except MlflowException as exc:
        return _refused(view.refusal or _explain(request, model) or _from_mlflow(exc))
    except RecursionError:  # pandas or MLflow on deeply nested values
        return _refused(view.refusal or refuse("the request is nested too deeply"))
    except Exception:
        if view.refusal is not None:
            return _refused(view.refusal)
        logger.warning("/invocations: an unexpected failure, answered 400", exc_info=True)
        return _refused(refuse(UNEXPECTED))
    if result.status != 200:  # MLflow's own 415s: media_type answers them first
        status = result.status if 400 <= result.status < 500 else 400
        return _refused(refuse(safe_message(result.response), status=status))
    return Scored(result.status, result.response, view.rows, view.labels, view.probabilities, view.columns)


def read_customers(read: FullRead, field: str | None) -> list[object] | None:
    """Every record's customer id in a request read for the full path (None where a record has none).

    None when no field is configured or the request's shape is not one whose records can be told apart here
    (MLflow decides what it means): the split then draws the side at random.
    """
    if not field:
        return None
    request = read.request
    if isinstance(request, CsvTable):
        if field not in request.header:
            return [None] * len(request.rows) or None
        i = request.header.index(field)
        return [row[i] or None for row in request.rows]
    for key in ("dataframe_split", *RECORD_KEYS):
        if key in request:
            return _payload_customers(key, request[key], field)
    return None


def read_records(read: FullRead) -> int:
    """How many records a request read for the full path holds, as far as can be told here (else 1)."""
    request = read.request
    if isinstance(request, CsvTable):
        return len(request.rows) or 1
    for key in ("dataframe_split", *RECORD_KEYS):
        payload = request.get(key)
        if key == "dataframe_split" and isinstance(payload, dict):
            payload = payload.get("data")
        if isinstance(payload, list):
            return len(payload) or 1
        if isinstance(payload, dict):  # columns: {"tenure": [1, 2], ...}
            lengths = [len(v) for v in payload.values() if isinstance(v, list)]
            return max(lengths, default=1) or 1
    return 1


def _payload_customers(key: str, payload: object, field: str) -> list[object] | None:
    if key == "dataframe_split":
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            return None
        names, data = payload.get("columns"), payload["data"]
        if not isinstance(names, list) or field not in names:
            return [None] * len(data) or None
        i = names.index(field)
        return [row[i] if isinstance(row, list) and len(row) > i else None for row in data] or None
    if isinstance(payload, list):
        return [record.get(field) if isinstance(record, dict) else None for record in payload] or None
    if isinstance(payload, dict):  # columns: {"tenure": [1, 2], ...}
        values = payload.get(field)
        return list(values) if isinstance(values, list) and values else None
    return None


def _explain(request: dict[str, object] | CsvTable | None, model: LoadedModel) -> Refusal | None:
    """MLflow refused a request before predicting: name the first cells it could not read, if we can."""
    try:
        if isinstance(request, CsvTable):
            return explain_csv(request, model.features)
        if isinstance(request, dict):
            return explain_json(request, model.features)
    except Exception:  # explaining is best effort: MLflow's own message is answered instead
        logger.debug("could not explain a refused /invocations request", exc_info=True)
    return None


def _from_mlflow(exc: MlflowException) -> Refusal:
    return Refusal([problem(safe_message(exc.message))], error_code=_client_code(exc))


def _client_code(exc: MlflowException) -> str:
    """MLflow's error code, unless it means a server error (MLflow's default): a client's input is BAD_REQUEST."""
    # MlflowException.get_http_status_code is unannotated in MLflow.
    return exc.error_code if exc.get_http_status_code() < 500 else BAD_REQUEST


def _refused(exc: Refusal) -> Scored:
    return Scored(exc.status, orjson.dumps(exc.answer()), 0)
