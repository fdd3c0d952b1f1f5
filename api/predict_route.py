"""POST /predict as a pure ASGI handler in front of FastAPI's router.

The route does little work of its own (decode, predict, encode: ~60 µs for a
record), so FastAPI's per-request machinery (routing, the Request object, the
endpoint runner, the response class) was most of its cost. Answered here, a
one-record request skips it; the middlewares around the app (metrics, body
limit) still see every request. Everything but /predict goes on to FastAPI.
The answers are those the FastAPI route gave: 200 with the version header,
the RequestError and not-ready bodies of the app's handlers, 405 for another
method. Its OpenAPI entry is written in api/openapi.py.
"""

from __future__ import annotations

import asyncio
import random

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from api.holder import ModelHolder
from api.live_stats import LiveStats
from api.metrics import VERSION_HEADER
from api.model.schema import RequestError
from api.release.frames import Columns
from api.release.redact import redact
from api.shadow import Shadow

PATH = "/predict"
# Batches up to this size are predicted on the event loop: a thread hop plus GIL
# contention costs more than the few milliseconds they take (measured: 1,000-row
# batches ran at 44 req/s through a thread, 81 req/s inline). Larger batches go
# to a worker thread so one huge request cannot stall the others for long.
INLINE_RECORDS = 2000
# sklearn refusing the values it was given: a client's input, answered 422 by name.
UNSCORABLE = (ValueError, TypeError, OverflowError, FloatingPointError)


class PredictRoute:
    """ASGI middleware answering POST /predict from the holder's current model."""

    def __init__(self, app: ASGIApp, holder: ModelHolder, stats: LiveStats, shadow: Shadow) -> None:
        self.app, self.holder, self.stats, self.shadow = app, holder, stats, shadow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer POST /predict (405 for another method on it); pass everything else on."""
        if scope["type"] != "http" or scope["path"] != PATH:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await _send(send, 405, orjson.dumps({"detail": "Method Not Allowed"}), [(b"allow", b"POST")])
        body = await _read_body(receive)
        if body is None:  # the client went away
            return None
        status, payload, version = await self.answer(body, request_id(scope))
        return await _send(
            send, status, payload, [(VERSION_HEADER.lower().encode(), version.encode())] if version else []
        )

    async def answer(self, body: bytes, request: str | None = None) -> tuple[int, bytes, str | None]:
        """(status, JSON body, model version for the header) for one request body (`request`: its X-Request-Id)."""
        # Read once: this request keeps these models even if a swap happens.
        model, canary, traffic = self.holder.current, self.holder.canary, self.holder.traffic
        if model is None:
            return 503, orjson.dumps({"detail": redact(self.holder.not_ready_reason)}), None
        try:
            columns = model.request_columns(body)
            if canary is not None and traffic.to_canary(_customer(columns, model.entity_field) or request):
                model, columns = canary, canary.request_columns(body)  # decoded with the canary's own schema
            rows = len(next(iter(columns.values())))
            try:
                if rows <= INLINE_RECORDS:
                    result = model.predict_columns(columns)
                else:
                    result = await asyncio.to_thread(model.predict_columns, columns)
            except UNSCORABLE as exc:
                raise model.unscorable(columns, exc) from None
        except RequestError as exc:
            return exc.status, orjson.dumps(exc.answer()), model.version  # the version that refused it, for metrics
        self.stats.record(model, columns, result.labels, result.probabilities)
        if canary is not None and traffic.mode == "shadow" and random.random() < traffic.shadow_share:
            self.shadow.offer(canary, body, result)
        answer = {"model_version": model.version, "predictions": result.labels, "probabilities": result.probabilities}
        return 200, orjson.dumps(answer), model.version


def request_id(scope: Scope) -> str | None:
    """The request's X-Request-Id header, if it has one (a canary split keys on it when records name no customer)."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("latin-1")
    return None


def _customer(columns: Columns, field: str | None) -> object | None:
    """The first record's customer id, when records carry one (ENTITY_ID_FIELD)."""
    values = columns.get(field) if field else None
    return values[0] if values is not None and len(values) else None


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
