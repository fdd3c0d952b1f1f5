"""/invocations: the answers of `mlflow models serve`, faster.

A well-formed JSON request (every column present with values of exactly the
schema's types, see api.columnar) is parsed with orjson and predicted on the
compiled path: MLflow's enforcement would pass it through unchanged. Anything
else (CSV, params, nulls where MLflow decides, odd types, errors) goes through
MLflow's own scoring-server functions, so what is accepted and what is
answered stay the same as `mlflow models serve`.
"""

from __future__ import annotations

import orjson
from mlflow.exceptions import MlflowException
from mlflow.models.utils import _enforce_schema
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE, ErrorCode
from mlflow.pyfunc import scoring_server

from api.loaded_model import LoadedModel


class _PyfuncView:
    """Just enough of a PyFuncModel for scoring_server.invocations."""

    def __init__(self, model: LoadedModel):
        self.metadata = model.mlflow_model
        self._model = model
        self.rows = 0

    def predict(self, data):
        if len(data) > self._model.max_batch_size:
            raise MlflowException(
                f"{len(data)} records exceed the batch limit of {self._model.max_batch_size}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        schema = self.metadata.get_input_schema()
        frame = _enforce_schema(data, schema) if schema is not None else data
        self.rows = len(frame)
        return self._model.predict_frame(frame)


RECORD_KEYS = ("dataframe_records", "inputs", "instances")


def score(model: LoadedModel, body: bytes, content_type: str) -> tuple[int, str | bytes, int]:
    """(status, response text, rows predicted) for one /invocations request."""
    return score_well_formed(model, body, content_type) or score_with_mlflow(model, body, content_type)


def score_well_formed(model: LoadedModel, body: bytes, content_type: str) -> tuple[int, bytes, int] | None:
    """The answer on the fast path, or None when the request needs MLflow's functions."""
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
    elif key in RECORD_KEYS:
        columns = model.invocation_types.from_records(payload, limit)
    else:
        return None
    if columns is None:
        return None
    try:
        labels = model.labels(columns)
    except (ValueError, TypeError, OverflowError, FloatingPointError):
        return None  # MLflow's path words the model's refusal
    return 200, orjson.dumps({"predictions": labels.tolist()}), len(labels)


def score_with_mlflow(model: LoadedModel, body: bytes, content_type: str) -> tuple[int, str, int]:
    view = _PyfuncView(model)
    try:
        result = scoring_server.invocations(body, content_type, view, view.metadata.get_input_schema())
    except MlflowException as exc:
        status = (
            400
            if exc.error_code in (_name(BAD_REQUEST), _name(INVALID_PARAMETER_VALUE))
            else exc.get_http_status_code()
        )
        # A client's mistake is never a 500 here: MLflow raises its own errors for bad input.
        return (status if status < 500 else 400), exc.serialize_as_json(), 0
    except RecursionError:  # Python's json parser on a deeply nested body
        return 400, _error("the JSON body is nested too deeply"), 0
    return result.status, result.response, view.rows


def _error(message: str) -> str:
    return MlflowException(message, error_code=BAD_REQUEST).serialize_as_json()


def _name(code: int) -> str:
    return ErrorCode.Name(code)
