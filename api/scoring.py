"""/invocations: MLflow's own request parsing and schema enforcement, our fast predict.

Parsing and enforcement go through MLflow's scoring server functions, so the
inputs accepted and the JSON returned are the same as `mlflow models serve`;
only the prediction itself takes the compiled path.
"""

from __future__ import annotations

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


def score(model: LoadedModel, body: bytes, content_type: str) -> tuple[int, str, int]:
    """(status, response text, rows predicted) for one /invocations request."""
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
