"""HTTP limits on uvicorn's httptools protocol: header size, header and body deadlines.

uvicorn with httptools bounds none of these: a 300 MB header was read and
answered, and partial headers or bodies shorter than their Content-Length kept
a connection open for ever. `LimitedHttpToolsProtocol` (uvicorn's `http=`
class, by path: `PROTOCOL`) adds, per connection:

- MAX_HEADER_BYTES (default 32768): the request line and headers of one
  request, counted on the wire. Past it: 431 and close; the rest is not read.
- HEADER_TIMEOUT_S (default 10): from a request's first byte (and from the
  connection's opening, so a silent connection is closed too) until its
  headers are complete. Past it: 408 and close.
- BODY_TIMEOUT_S (default 60): from the headers until the whole body has
  arrived, in total (a trickled body cannot extend it). Past it: 408 if no
  response has started, and close; the app's receive() gets http.disconnect.
- KEEP_ALIVE_TIMEOUT_S (default 5): uvicorn's `timeout_keep_alive`, passed by
  `python -m api`.

The limits are read from the environment once per process, when this module
is imported (uvicorn imports the protocol class in each worker); a bad value
raises SettingsError naming the variable.

Cost per request: a few attribute reads and writes, 2 to 3 µs of CPU over
uvicorn's own protocol (about 31 µs a keep-alive request, measured in-process;
a one-record /predict is about 200 µs). A request that arrives in one read arms
no timer: the header deadline is armed only when a read ends inside a head (and
on a new connection), the body deadline only when a read ends inside a body.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.settings import SettingsError, _number

PROTOCOL = "api.http_limits:LimitedHttpToolsProtocol"  # uvicorn's `http=`, or `--http` on its command line
# After an error answer: FIN at once, the socket closed this much later. Closing at once with unread
# bytes from the client (a header still streaming in) makes the kernel send a reset, which can
# destroy the answer before the client has it.
LINGER_S = 1.0

# Where the parser is in the stream: between requests, inside a request's head, inside its body.
IDLE, HEAD, BODY = 0, 1, 2


@dataclass(frozen=True)
class HttpLimits:
    """The limits every connection of this process is held to (MAX_HEADER_BYTES and the three deadlines)."""

    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HttpLimits:
        """The limits in the environment (or `env`), defaults where unset; SettingsError names a bad value."""
        env = os.environ if env is None else env
        return cls(
            max_header_bytes=_number(env, "MAX_HEADER_BYTES", cls.max_header_bytes, int),
            header_timeout_s=_seconds(env, "HEADER_TIMEOUT_S", cls.header_timeout_s),
            body_timeout_s=_seconds(env, "BODY_TIMEOUT_S", cls.body_timeout_s),
            keep_alive_timeout_s=_seconds(env, "KEEP_ALIVE_TIMEOUT_S", cls.keep_alive_timeout_s),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name, default, float)
    if not math.isfinite(value):
        raise SettingsError(f"{name}={env.get(name)!r} must be a finite number")
    return value


LIMITS = HttpLimits.from_env()


class _Stop(Exception):
    """Raised in a parser callback to stop the parser after a refusal."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with LIMITS enforced.

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
        self.max_header_bytes = LIMITS.max_header_bytes
        self.header_timeout_s = LIMITS.header_timeout_s
        self.body_timeout_s = LIMITS.body_timeout_s
        self._phase = IDLE
        self._transitions = 0  # heads and messages completed: tells data_received what a read contained
        self._head_bytes = 0  # bytes of the current head counted so far
        self._head_exact = True  # the current head began at the start of a read: _head_bytes is all of it
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._stopped = False  # answered (or handed over): nothing more is read or parsed
        self._pending: bytes | None = None  # an error answer waiting for the responses owed before it
        self._linger: asyncio.TimerHandle | None = None

    # Connection

    # uvicorn's own signature, narrower than asyncio.Protocol's (a BaseTransport): ignored as uvicorn ignores it.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Uvicorn's, then the header deadline: a connection that sends nothing is closed too."""
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        """Uvicorn's, once the deadlines and a lingering close are cancelled."""
        self._cancel_timers()
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
        self._head_exact = False  # a later head in this read begins mid-read
        self._phase = BODY
        self._transitions += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        HttpToolsProtocol.on_headers_complete(self)  # not super(): every request's path

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
        cycle = self.cycle
        queued = bool(self.pipeline) and self.pipeline[0][0] is cycle
        if queued:  # never started: it waited behind a request still being answered
            self.pipeline.popleft()
        started, complete = cycle.response_started, cycle.response_complete
        cycle.disconnected = True  # the app's receive() now answers http.disconnect, its send() does nothing
        cycle.message_event.set()
        if started and not complete:  # too late for a 408, and the response cannot be finished
            self._stopped = True
            self._cancel_timers()
            self.transport.close()
        elif complete:  # answered already (without reading the whole body): close after it
            self._refuse(None, "", owed=False)
        else:
            self._refuse(408, f"request body not complete within {self.body_timeout_s:g} s", owed=queued)

    def _owed(self) -> bool:
        """A response to an earlier request on this connection is still to be sent."""
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, status: int | None, detail: str, owed: bool) -> None:
        """Read nothing more; answer `status` (after the responses owed before it), if any, and close."""
        self._stopped = True
        self._cancel_timers()
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.pause_reading()
        self.flow.read_paused = False  # so uvicorn's flow control (an app's receive()) cannot resume reading
        answer = self._answer(status, detail) if status else b""
        if owed:
            self._pending = answer
        else:
            self._finish(answer)

    def _answer(self, status: int, detail: str) -> bytes:
        body = orjson.dumps({"detail": detail})
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
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
