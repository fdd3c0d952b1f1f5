"""Refuse a request body over the limit before anything reads or parses it."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised from the app's receive() once the body is past the limit: it unwinds the app."""

    def __init__(self, seen: int = 0) -> None:
        super().__init__(seen)
        self.seen = seen


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's Content-Length as the client declared it (None: none, or not a number)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def refuse(send: Send, size: int, max_bytes: int) -> None:
    """Answer 413 for a body of `size` bytes or more, and close: the rest of an oversized body is not read."""
    body = orjson.dumps({"detail": f"request body of {size} bytes or more exceeds the limit of {max_bytes} bytes"})
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Pure ASGI: 413 when Content-Length says too much, or when a chunked body grows past the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 413 once its declared or received body is over the limit."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = declared_length(scope["headers"])
        if declared is not None and declared > self.max_bytes:
            return await refuse(send, declared, self.max_bytes)
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(seen)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await refuse(send, seen, self.max_bytes)
