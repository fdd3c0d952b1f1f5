"""/invocations: the answers of `mlflow models serve`, faster, and closed to hostile input.

A well-formed JSON request (every column present with values of exactly the
schema's types, see api.model.columnar) is parsed with orjson and predicted on the
compiled path: MLflow's enforcement would pass it through unchanged. Anything
else (CSV, params, nulls where MLflow decides, odd types, errors) is read and
checked by api.model.invocation_input (content type, numbers, duplicated keys,
lists as values, CSV structure, the batch limit), then goes through MLflow's
own scoring-server functions, so what is accepted and how it is predicted stay
those of `mlflow models serve`. Every error is answered as MLflow's
`{"error_code", "message"}` without its stack trace, and every exception on
this path is caught: none is a 5xx, none shows a traceback, path or class name.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
from mlflow.exceptions import MlflowException
from mlflow.models.utils import _enforce_schema
from mlflow.pyfunc import scoring_server

from api.model.invocation_input import (
    BAD_REQUEST,
    CSV_TYPE,
    CsvTable,
    Refusal,
    batch_limit,
    explain_csv,
    explain_json,
    media_type,
    problem,
    read_csv,
    read_json,
    refuse,
    refuse_infinite,
    safe_message,
)
from api.model.loaded_model import LoadedModel

logger = logging.getLogger(__name__)

RECORD_KEYS = ("dataframe_records", "inputs", "instances")
# sklearn refusing the values it was given: a client's input, named field by field (as on /predict).
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
        self.refusal: Refusal | None = None  # MLflow rewords whatever predict raises: this is the cause

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
            return model.predict_frame(frame)
        except UNSCORABLE as exc:  # e.g. beyond float32 for a tree model: named as /predict names it
            columns = {f.name: frame[f.name].tolist() for f in model.features if f.numeric}
            problems = model.unscorable(columns, exc).problems
            raise Refusal([{**p, "message": safe_message(p["message"])} for p in problems]) from None


def score(model: LoadedModel, body: bytes, content_type: str) -> tuple[int, str | bytes, int]:
    """(status, response text, rows predicted) for one /invocations request."""
    return score_well_formed(model, body, content_type) or score_with_mlflow(model, body, content_type)


def score_well_formed(model: LoadedModel, body: bytes, content_type: str) -> tuple[int, bytes, int] | None:
    """The answer on the fast path, or None when the request needs the full path."""
    if content_type.lower().replace(" ", "") not in ("application/json", "application/json;charset=utf-8"):
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(request) is not dict or len(request) != 1:
        return None
    ((key, payload),) = request.items()
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
    try:
        labels = model.labels(columns)
    except Exception:  # the model refused these values: the full path names the field
        return None
    return 200, orjson.dumps({"predictions": labels.tolist()}), len(labels)


def _colons(body: bytes) -> int:
    if len(body) < COUNT_WITH_NUMPY:
        return body.count(b":")
    return int(np.count_nonzero(np.frombuffer(body, np.uint8) == ord(":")))


def score_with_mlflow(model: LoadedModel, body: bytes, content_type: str) -> tuple[int, bytes | str, int]:
    """Read and check the request, then MLflow's functions; every failure a 4xx in MLflow's error shape."""
    view = _PyfuncView(model)
    request: dict[str, object] | CsvTable | None = None
    try:
        mime = media_type(content_type)
        if mime == CSV_TYPE:
            request = read_csv(body, model.features, model.max_batch_size)
            data: dict[str, object] | str = request.text
        else:
            request = data = read_json(body, model.features, model.max_batch_size)
        # scoring_server.invocations is unannotated in MLflow.
        result = scoring_server.invocations(data, mime, view, view.metadata.get_input_schema())
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
    return result.status, result.response, view.rows


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


def _refused(exc: Refusal) -> tuple[int, bytes, int]:
    return exc.status, orjson.dumps(exc.answer()), 0
