"""POST /predict as a pure ASGI handler in front of FastAPI's router.

The route does little work of its own (decode, predict, encode: ~60 µs for a
record), so FastAPI's per-request machinery (routing, the Request object, the
endpoint runner, the response class) was most of its cost. Answered here, a
one-record request skips it; the middlewares around the app (metrics, body
limit) still see every request. Everything but /predict goes on to FastAPI.
The answers are those the FastAPI route gave: 200 with the version header
(and, since the prediction log, `prediction_ids` in the body and the
request's id in X-Prediction-Id: record i's id is `<id>-<i>`),
the RequestError and not-ready bodies of the app's handlers, 405 for another
method. Its OpenAPI entry is written in api/openapi.py.
"""

from __future__ import annotations

import time

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from api.decisions import Decisions
from api.holder import ModelHolder
from api.metrics import VERSION_HEADER_BYTES
from api.model.loaded_model import LoadedModel
from api.model.online_store import StoreUnavailable
from api.model.schema import RequestError
from api.prediction_log import PREDICTION_ID_HEADER, prediction_ids, request_id
from api.release.redact import redact
from api.request_path import Refused, RequestPath
from api.shadow import Shadow

PATH = "/predict"
PREDICTION_ID_HEADER_BYTES = PREDICTION_ID_HEADER.lower().encode()
_decode = LoadedModel.request_columns  # a /predict body as one model's columns (its own schema)


class PredictRoute:
    """ASGI middleware answering POST /predict from the holder's current model."""

    def __init__(self, app: ASGIApp, holder: ModelHolder, path: RequestPath) -> None:
        self.app, self.holder, self.path = app, holder, path

    @property
    def shadow(self) -> Shadow:
        """The shadow the request path offers copies to (what a test finds in the middleware stack)."""
        return self.path.shadow

    @property
    def decisions(self) -> Decisions:
        """The release decisions the request path counts (what a test finds in the middleware stack)."""
        return self.path.decisions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer POST /predict (405 for another method on it); pass everything else on."""
        if scope["type"] != "http" or scope["path"] != PATH:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await _send(send, 405, orjson.dumps({"detail": "Method Not Allowed"}), [(b"allow", b"POST")])
        body = await _read_body(receive)
        if body is None:  # the client went away
            return None
        request = request_id(scope)
        status, payload, version = await self.answer(body, scope, time.perf_counter(), request)
        headers = [(VERSION_HEADER_BYTES, version.encode())] if version else []
        if status == 200:
            headers.append((PREDICTION_ID_HEADER_BYTES, request.encode()))
        return await _send(send, status, payload, headers)

    async def answer(
        self, body: bytes, scope: Scope | None = None, read_at: float | None = None, request: str | None = None
    ) -> tuple[int, bytes, str | None]:
        """(status, JSON body, model version for the header) for one request body, read whole at `read_at`.

        The records decoded, the side chosen, predicted, counted and logged by
        the request path both doors share (api/request_path.py). `request`: the
        request's id (None: a random one); record i's prediction id is `<request>-<i>`.
        """
        request = request or request_id(None)
        # Read once: this request keeps these models even if a swap happens.
        production, canary, traffic = self.holder.current, self.holder.canary, self.holder.traffic
        if production is None:
            return 503, orjson.dumps({"detail": redact(self.holder.not_ready_reason)}), None
        started = time.perf_counter() if read_at is None else read_at
        try:
            served = await self.path.answer(production, canary, traffic, _decode, body, scope, started, request=request)
        except RequestError as exc:  # production cannot read it: no side decided, nothing counted
            return exc.status, orjson.dumps(exc.answer()), production.version
        except Refused as refused:  # the version that refused it, for metrics
            return refused.error.status, orjson.dumps(refused.error.answer()), refused.model.version
        except StoreUnavailable as exc:  # records by id, the online store down or slow: never the version's error
            return 503, orjson.dumps({"detail": redact(exc.message), "reason": exc.reason}), production.version
        model, prediction = served.model, served.prediction
        answer: dict[str, object] = {"model_version": model.version, "predictions": prediction.labels,
                                     "probabilities": prediction.probabilities,
                                     "prediction_ids": prediction_ids(request, len(prediction.labels))}  # fmt: skip
        if served.warnings:  # stale features served (the version's feature service says warn)
            answer["warnings"] = served.warnings
        return 200, orjson.dumps(answer), model.version


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": payload})
