"""POST /predict as a pure ASGI handler in front of FastAPI, its metrics and body limit inline.

The route does little work of its own (decode, predict, count, encode: ~15 µs
for a record in process), so the stack around it was most of its cost: FastAPI's
per-request machinery (routing, the Request object, the endpoint runner, the
response class), then Starlette's error middleware and the metrics and body-limit
middlewares, each wrapping receive and send in closures of its own (~9 µs more
in process, about twice that in a server). The app (api/app.py's ChurnApp)
hands /predict here before any of it; everything else goes on to FastAPI and
its middlewares. What those did for /predict is done here, with the same
outcome: the request counted and timed by status and version (499, or the HTTP
layer's own status, when the client left first), 413 for a body over
MAX_BODY_BYTES, 500 "Internal Server Error" for an unexpected error (raised on,
so uvicorn logs it). The answers are those the FastAPI route gave: 200 with the
version header (and, since the prediction log, `prediction_ids` in the body and
the request's id in X-Prediction-Id: record i's id is `<id>-<i>`), the
RequestError and not-ready bodies of the app's handlers, 405 for another method.
Its OpenAPI entry is written in api/openapi.py.
"""

from __future__ import annotations

import time
from bisect import bisect_left

import orjson
from starlette.types import Receive, Scope, Send

from api.body_limit import BodyTooLarge, declared_length, refuse
from api.decisions import Decisions
from api.holder import ModelHolder
from api.http_protocol import ANSWERED_BY_PROTOCOL
from api.live_stats import add_to_histogram
from api.metrics import DISCONNECTED, REQUEST_LATENCY_BUCKETS, VERSION_HEADER_BYTES, ServiceMetrics
from api.model.loaded_model import LoadedModel
from api.model.online_store import StoreUnavailable
from api.model.schema import RequestError
from api.prediction_log import PREDICTION_ID_HEADER, prediction_ids, request_id
from api.release.redact import redact
from api.request_path import Refused, RequestPath
from api.shadow import Shadow

PATH = "/predict"
PREDICTION_ID_HEADER_BYTES = PREDICTION_ID_HEADER.lower().encode()
INTERNAL_ERROR = b"Internal Server Error"  # Starlette's words for an unexpected error, as every other route answers
_decode = LoadedModel.request_columns  # a /predict body as one model's columns (its own schema)


class PredictRoute:
    """The ASGI handler of /predict: POST answered from the holder's current model, counted and timed."""

    def __init__(self, holder: ModelHolder, path: RequestPath, metrics: ServiceMetrics, max_bytes: int) -> None:
        self.holder, self.path, self.metrics, self.max_bytes = holder, path, metrics, max_bytes
        # Answers since the last flush by (status, version): per latency bucket (the last above every bound), and
        # their seconds. Bumped and flushed on the event loop only; prometheus_client's own calls cost ~2 µs.
        self._answered: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    @property
    def shadow(self) -> Shadow:
        """The shadow the request path offers copies to (what a test finds in the middleware stack)."""
        return self.path.shadow

    @property
    def decisions(self) -> Decisions:
        """The release decisions the request path counts (what a test finds in the middleware stack)."""
        return self.path.decisions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request to /predict (405 for a method other than POST), counted by status and version."""
        started = time.perf_counter()
        status, version = "500", ""  # an unexpected error's, unless answered
        try:
            status, version = await self._serve(scope, receive, send)
        finally:
            seconds = time.perf_counter() - started
            counts, total = self._answered.get((status, version)) or self._tally(status, version)
            counts[bisect_left(REQUEST_LATENCY_BUCKETS, seconds)] += 1
            total[0] += seconds

    def _tally(self, status: str, version: str) -> tuple[list[int], list[float]]:
        tally = self._answered[status, version] = ([0] * (len(REQUEST_LATENCY_BUCKETS) + 1), [0.0])
        return tally

    def flush(self) -> None:
        """Hand the requests answered since the last flush to the metrics (every second, and before each scrape)."""
        answered, self._answered = self._answered, {}
        metrics = self.metrics
        for (status, version), (counts, total) in answered.items():
            metrics.child(metrics.requests, PATH, status, version).inc(sum(counts))
            add_to_histogram(metrics.child(metrics.latency, PATH, version), counts, total[0])

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> tuple[str, str]:
        """Read, answer and send; (status, version) for the metrics."""
        declared = declared_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:  # first, as the body limit's middleware did: closed
            await refuse(send, declared, self.max_bytes)
            return "413", ""
        if scope["method"] != "POST":
            await _send(send, 405, orjson.dumps({"detail": "Method Not Allowed"}), [(b"allow", b"POST")])
            return "405", ""
        try:
            body = await _read_body(receive, self.max_bytes)
        except BodyTooLarge as exc:
            await refuse(send, exc.seen, self.max_bytes)
            return "413", ""
        if body is None:  # the client went away (or the HTTP layer answered: a timeout's 408, the budget's 503)
            return str(scope.get(ANSWERED_BY_PROTOCOL, DISCONNECTED)), ""
        request = request_id(scope)
        try:
            status, payload, version = await self.answer(body, scope, time.perf_counter(), request)
        except Exception:
            await _send(send, 500, INTERNAL_ERROR, [], b"text/plain; charset=utf-8")
            raise
        headers = [(VERSION_HEADER_BYTES, version.encode())] if version else []
        if status == 200:
            headers.append((PREDICTION_ID_HEADER_BYTES, request.encode()))
        await _send(send, status, payload, headers)
        return str(status), version or ""

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


async def _read_body(receive: Receive, max_bytes: int) -> bytes | None:
    """The whole body (None: the client left first); BodyTooLarge once it grows past `max_bytes`."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= max_bytes:  # most bodies: one message
        return body
    chunks, seen = [body], len(body)
    while True:
        if seen > max_bytes:
            raise BodyTooLarge(seen)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        seen += len(chunks[-1])


async def _send(
    send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]], media: bytes = b"application/json"
) -> None:
    start = [(b"content-type", media), (b"content-length", str(len(payload)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": payload})
