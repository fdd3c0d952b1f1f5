"""HTTP limits on uvicorn's httptools protocol: header size, header and body deadlines, the body budget.

uvicorn with httptools bounds none of these: a 300 MB header was read and
answered, and partial headers or bodies shorter than their Content-Length kept
a connection open for ever. `LimitedHttpToolsProtocol` (uvicorn's `http=`
class, by path: `PROTOCOL`) holds each connection to MAX_HEADER_BYTES (431 and
close, the rest unread), HEADER_TIMEOUT_S and BODY_TIMEOUT_S (408 and close; a
trickled body cannot extend its deadline) and the worker's body budget,
MAX_BODY_BYTES_IN_FLIGHT (api/body_budget.py: 503 with Retry-After and close,
before any of the body is read); README.md's "HTTP limits" says each default.
The limits are the worker's settings (api.settings.current(), read once per
process and shared with the app).

Cost per request: a few attribute reads and writes, 2 to 3 µs of CPU over
uvicorn's own protocol (about 31 µs a keep-alive request, measured in-process;
a one-record /predict is about 200 µs). A request that arrives in one read arms
no timer: the header deadline is armed only when a read ends inside a head (and
on a new connection), the body deadline only when a read ends inside a body.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any

import httptools
import orjson
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from api.body_budget import BodyBudget
from api.settings import current

PROTOCOL = "api.http_protocol:LimitedHttpToolsProtocol"  # uvicorn's `http=`, or `--http` on its command line
# After an error answer: FIN at once, the socket closed this much later. Closing at once with unread
# bytes from the client (a header still streaming in) makes the kernel send a reset, which can
# destroy the answer before the client has it.
LINGER_S = 1.0

# Where the parser is in the stream: between requests, inside a request's head, inside its body.
IDLE, HEAD, BODY = 0, 1, 2
RETRY_AFTER_S = 1  # a refused client may try again this much later: reservations end as bodies are answered
# Where the protocol, not the app, answered a request (408 or 503): the metrics label it so, not as a disconnect.
ANSWERED_BY_PROTOCOL = "api.answered_by_protocol"
_RETRY_AFTER = b"retry-after: %d\r\n" % RETRY_AFTER_S


@functools.cache
def budget() -> BodyBudget:
    """This worker's body budget (MAX_BODY_BYTES_IN_FLIGHT): every connection draws on it."""
    return BodyBudget(current().max_body_bytes_in_flight)


class _Stop(Exception):
    """Raised in a parser callback to stop the parser after a refusal."""


class _Joining:
    """Stands in for the transport while a response's head and first body part are sent: written as one.

    The head's write is held; the body's write sends both at once, before uvicorn
    goes on (its on_response callback may write what a pipelined refusal owes).
    """

    __slots__ = ("head", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.head is None:
            self.head = data
        else:
            head, self.head = self.head, b""
            self.transport.write(head + data if head else data)

    def close(self) -> None:
        if self.head:  # a head whose body wrote nothing: written before the close, never after it
            self.transport.write(self.head)
            self.head = b""
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class OneWriteCycle(RequestResponseCycle):
    """Uvicorn's request-response cycle, the response's head held until its first body part: one write, not two.

    Uvicorn writes the head at `http.response.start` and the body at
    `http.response.body`: two system calls and two TCP segments for every
    answer. Written together they cost one: 12 % more one-record requests a
    second for a raw ASGI app on this machine (benchmarks/serve_vs_mlflow.py
    measures both servers). The head's checks are uvicorn's own, run on the
    held message when the body comes; a second start before any body (uvicorn's
    500 for an app that never finished its answer) replaces the held one.
    """

    held: ASGISendEvent | None = None

    async def send(self, message: ASGISendEvent) -> None:
        """Hold a response's start; write it with the first body part that follows, in one write."""
        # A HEAD answer's body writes nothing: its head goes out alone, at once, as uvicorn's would.
        if message["type"] == "http.response.start" and not self.response_started and self.scope["method"] != "HEAD":
            self.held = message
            return
        held, self.held = self.held, None
        if held is None:
            return await super().send(message)
        if message["type"] != "http.response.body":  # not an answer uvicorn would take: its own error for it
            await super().send(held)
            return await super().send(message)
        transport = self.transport
        joining = self.transport = _Joining(transport)  # type: ignore[assignment]  # write(), close(), is_closing()
        try:
            await super().send(held)
            await super().send(message)
        finally:
            self.transport = transport
            if joining.head and not transport.is_closing():  # the body was never written (an error): the head as before
                transport.write(joining.head)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the worker's HTTP limits enforced (api.settings.current()).

    Header bytes are counted per read (`data_received`) rather than per parser
    callback: httptools hands over a header only once it is complete, so a
    300 MB header would be buffered before any callback saw it. A head that
    starts at the beginning of a read (every head but a pipelined one) is fed
    to the parser at most MAX_HEADER_BYTES at a time, so it is refused exactly
    at the limit. A head that begins in the middle of a read (a pipelined
    request after another) is counted from the next read on, and measured as
    parsed when complete: either way no more than one read (256 KB) past the
    limit is ever held.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # uvicorn's arguments, passed on untouched
        super().__init__(*args, **kwargs)
        limits = current()  # uvicorn gives the protocol class nothing else
        self.max_header_bytes = limits.max_header_bytes
        self.header_timeout_s = limits.header_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self._phase = IDLE
        self._transitions = 0  # heads and messages completed: tells data_received what a read contained
        self._head_bytes = 0  # bytes of the current head counted so far
        self._head_exact = True  # the current head began at the start of a read: _head_bytes is all of it
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._stopped = False  # answered (or handed over): nothing more is read or parsed
        self._pending: bytes | None = None  # an error answer waiting for the responses owed before it
        self._linger: asyncio.TimerHandle | None = None
        self.max_body_bytes = limits.max_body_bytes
        self._held: deque[int] = deque()  # bytes reserved per request not yet answered, oldest first
        self._growing = False  # the body being read has no Content-Length: reserved as it arrives
        self._body_seen = 0  # bytes of that body so far

    # Connection

    # uvicorn's own signature, narrower than asyncio.Protocol's (a BaseTransport): ignored as uvicorn ignores it.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Uvicorn's, then the header deadline: a connection that sends nothing is closed too."""
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """Uvicorn's, once the deadlines and a lingering close are cancelled and the reservations released."""
        self._cancel_timers()
        budget().give(sum(self._held), self.loop)
        self._held.clear()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed a read to the parser, counting head bytes against the limit and arming the deadline it ends in."""
        if self._stopped:
            return
        self._unset_keepalive_if_required()
        transitions = self._transitions
        if self._phase == BODY or len(data) <= self.max_header_bytes - self._head_bytes:
            try:  # uvicorn's data_received, inline: this is every request's path
                self.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                self._parser_stopped(exc)
        elif self._feed_head_past_room(data, transitions):  # in a head: up to the limit, and past it only if it ends
            return
        if self._stopped:
            return
        if self._transitions == transitions:  # this read continued the head or body it began in
            if self._phase != BODY:
                self._head_bytes += len(data)
                if self._phase == IDLE and self._owed():  # blank lines after a request still being answered
                    return
        else:
            self._head_bytes = 0
            self._head_exact = self._phase == IDLE  # else a head began mid-read: counted from the next read on
            if self._phase == IDLE:  # the read ended with a request: no deadline until more arrives
                return
        if not self.pipeline:  # else reading is paused until the requests before this one are answered
            self._arm()

    def _feed_head_past_room(self, data: bytes, transitions: int) -> bool:
        """Feed `data`, more than the head may still take: refuse (True) if the head does not end in its room."""
        room = self.max_header_bytes - self._head_bytes
        for piece in (data[:room], data[room:]):
            if piece:
                try:
                    self.parser.feed_data(piece)
                except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                    self._parser_stopped(exc)
            if self._stopped:
                return True
            if self._transitions == transitions:  # still inside the head, and more of it to come
                self._too_large()
                return True
        return False

    def _parser_stopped(self, exc: Exception) -> None:
        """What uvicorn's data_received does when the parser raises."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self._should_upgrade():
                self._stopped = True
                self._cancel_timers()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._stopped:  # our own callback stopped the parser, after a refusal
            return
        self._stopped = True
        self._cancel_timers()
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    # Parser callbacks

    def on_message_begin(self) -> None:
        """A request begins: its head is being read."""
        self._phase = HEAD
        HttpToolsProtocol.on_message_begin(self)  # not super(): every request's path

    def on_headers_complete(self) -> None:
        """The head is complete: refused if it was over the limit, else its deadline ends and its body's begins."""
        if not self._head_exact and self._parsed_head_bytes() > self.max_header_bytes:
            self._too_large()
            raise _Stop
        declared = self._declared_length()
        self._growing, self._body_seen = declared is None, 0
        reserved = min(declared or 0, self.max_body_bytes)  # larger: answered 413 unread (api/body_limit.py)
        if reserved and not budget().take(reserved, 0):
            self._over_budget(reserved)
            raise _Stop
        self._held.append(reserved)
        self._head_exact = False  # a later head in this read begins mid-read
        self._phase = BODY
        self._transitions += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        HttpToolsProtocol.on_headers_complete(self)  # not super(): every request's path
        if type(self.cycle) is RequestResponseCycle:  # made just now: its task has not run yet
            self.cycle.__class__ = OneWriteCycle  # uvicorn builds the cycle itself; this is its class, one method more

    def on_body(self, body: bytes) -> None:
        """Uvicorn's; a body without a Content-Length reserves its bytes as they arrive, refused past the budget."""
        if self._growing and not self.cycle.response_complete:
            size = len(body)
            if not budget().take(size, self._body_seen):
                self._end_body(503, f"request bodies in flight would exceed {budget().limit} bytes", _RETRY_AFTER)
                raise _Stop
            self._body_seen += size
            self._held[-1] += size
        HttpToolsProtocol.on_body(self, body)  # not super(): every body's path

    def on_message_complete(self) -> None:
        """The body is complete: its deadline ends."""
        self._phase = IDLE
        self._transitions += 1
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        HttpToolsProtocol.on_message_complete(self)  # not super(): every request's path

    # Responses

    def on_response_complete(self) -> None:
        """Uvicorn's, or after a refusal the responses owed before it and then the refusal itself."""
        if self._held:  # the oldest request is answered: its body is no longer held
            budget().give(self._held.popleft(), self.loop)
        if self._pending is None:
            HttpToolsProtocol.on_response_complete(self)  # not super(): every request's path
            # A pipelined head or body the server was not reading while earlier requests were answered.
            if self._phase != IDLE and not self.pipeline and not self.transport.is_closing():
                self._arm()
            return
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.pipeline:  # requests complete before the refused one are still answered
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            pending, self._pending = self._pending, None
            self._finish(pending)

    def shutdown(self) -> None:
        """Close at once after a refusal already answered; else uvicorn's graceful shutdown."""
        if self._stopped and self._pending is None:
            self.transport.close()
        else:
            super().shutdown()

    # Limits

    def _arm(self) -> None:
        """Start the deadline of the head or body being read, unless it runs already."""
        if self._phase != BODY:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)
        elif self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timeout)

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _parsed_head_bytes(self) -> int:
        """The request line and headers as parsed: the wire size less any optional whitespace."""
        size = len(self.url) + 17  # at least: "GET ", " HTTP/1.1\r\n", the blank line
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def _declared_length(self) -> int | None:
        """The request's Content-Length (the parser checked it), or None: chunked, or no body."""
        for name, value in self.headers:
            if name == b"content-length":
                return int(value)
        return None

    def _over_budget(self, size: int) -> None:
        self.logger.warning(
            "A request body of %d bytes does not fit in MAX_BODY_BYTES_IN_FLIGHT (%d of %d held): answered 503.",
            size, budget().in_flight, budget().limit,
        )  # fmt: skip
        detail = f"request bodies in flight would exceed {budget().limit} bytes; try again shortly"
        self._refuse(503, detail, owed=self._owed(), headers=_RETRY_AFTER)

    def _too_large(self) -> None:
        limit = self.max_header_bytes
        self.logger.warning("Request line and headers over %d bytes (MAX_HEADER_BYTES): answered 431.", limit)
        self._refuse(431, f"request line and headers exceed {limit} bytes", owed=self._owed())

    def _head_timeout(self) -> None:
        self._head_timer = None
        detail = f"request headers not complete within {self.header_timeout_s:g} s"
        self._refuse(408, detail, owed=self._owed())

    def _body_timeout(self) -> None:
        self._body_timer = None
        self._end_body(408, f"request body not complete within {self.body_timeout_s:g} s")

    def _end_body(self, status: int, detail: str, headers: bytes = b"") -> None:
        """Stop reading the body of the request being read: answer `status` if no response began, and close."""
        cycle = self.cycle
        queued = bool(self.pipeline) and self.pipeline[0][0] is cycle
        if queued:  # never started: it waited behind a request still being answered
            self.pipeline.popleft()
        started, complete = cycle.response_started, cycle.response_complete
        cycle.disconnected = True  # the app's receive() now answers http.disconnect, its send() does nothing
        cycle.message_event.set()
        cycle.scope[ANSWERED_BY_PROTOCOL] = status  # type: ignore[literal-required]  # what the metrics count it as
        if started and not complete:  # too late for a 408, and the response cannot be finished
            self._stopped = True
            self._cancel_timers()
            self.transport.close()
        elif complete:  # answered already (without reading the whole body): close after it
            self._refuse(None, "", owed=False)
        else:
            self._refuse(status, detail, owed=queued, headers=headers)

    def _owed(self) -> bool:
        """A response to an earlier request on this connection is still to be sent."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, status: int | None, detail: str, owed: bool, headers: bytes = b"") -> None:
        """Read nothing more; answer `status` (after the responses owed before it), if any, and close."""
        self._stopped = True
        self._cancel_timers()
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.pause_reading()
        self.flow.read_paused = False  # so uvicorn's flow control (an app's receive()) cannot resume reading
        answer = self._answer(status, detail, headers) if status else b""
        if owed:
            self._pending = answer
        else:
            self._finish(answer)

    def _answer(self, status: int, detail: str, headers: bytes = b"") -> bytes:
        body = orjson.dumps({"detail": detail})
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                headers,
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        return b"".join(content)

    def _finish(self, answer: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if answer:
            transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()
