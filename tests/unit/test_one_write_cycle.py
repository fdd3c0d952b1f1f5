"""A response's head and body leave in one write (api.http_protocol.OneWriteCycle), with uvicorn's checks kept."""

import asyncio
import logging

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from api.http_protocol import OneWriteCycle

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
BODY = {"type": "http.response.body", "body": b"hello"}


class Transport:
    """What the cycle wrote, write by write, and whether it closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def cycle(keep_alive: bool = True) -> tuple[OneWriteCycle, Transport, list[str]]:
    transport, completed = Transport(), []
    made = OneWriteCycle(
        scope={"method": "POST"}, transport=transport, flow=FlowControl(transport), logger=logging.getLogger(),
        access_logger=logging.getLogger(), access_log=False, default_headers=[(b"server", b"test")],
        message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
        on_response=lambda: completed.append(b"".join(transport.writes).decode()),
    )  # fmt: skip
    return made, transport, completed


def test_head_and_body_are_one_write_before_the_response_is_complete():
    # given a cycle; when an answer is sent as ASGI's two messages
    made, transport, completed = cycle()

    async def answer() -> None:
        await made.send(START)
        assert transport.writes == []  # the head is held
        await made.send(BODY)

    asyncio.run(answer())
    # then one write carries the head and the body, written before uvicorn hears the response is complete
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\nserver: test\r\ncontent-length: 5\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\nhello")
    assert completed == [transport.writes[0].decode()] and made.response_complete


def test_a_closing_answer_is_written_then_closed():
    made, transport, _ = cycle(keep_alive=False)
    asyncio.run(_send_all(made, START, BODY))
    assert len(transport.writes) == 1 and b"connection: close" in transport.writes[0] and transport.closed


def test_a_streamed_answer_sends_its_later_parts_as_uvicorn_does():
    made, transport, _ = cycle()
    start = {"type": "http.response.start", "status": 200, "headers": []}  # no length: chunked
    first = {"type": "http.response.body", "body": b"ab", "more_body": True}
    asyncio.run(_send_all(made, start, first, {"type": "http.response.body", "body": b"c"}))
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n2\r\nab\r\n")
    assert transport.writes[1] == b"1\r\nc\r\n0\r\n\r\n"


def test_a_second_start_before_any_body_replaces_the_first():
    # uvicorn's own 500, when an app started an answer and failed before its body
    made, transport, _ = cycle()
    error = {"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]}
    asyncio.run(_send_all(made, START, error, {"type": "http.response.body", "body": b""}))
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 500 ")


def test_uvicorns_checks_still_refuse_a_body_longer_than_declared_after_writing_the_head():
    made, transport, _ = cycle()
    with pytest.raises(RuntimeError, match="longer than Content-Length"):
        asyncio.run(_send_all(made, START, {"type": "http.response.body", "body": b"too long"}))
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"content-length: 5\r\n\r\n")


async def _send_all(made: OneWriteCycle, *messages: dict) -> None:
    for message in messages:
        await made.send(message)  # type: ignore[arg-type]


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_head_request_gets_its_head_at_once_and_before_any_close(keep_alive):
    # given: a HEAD request (its body writes nothing), kept alive or closing
    made, transport, completed = cycle(keep_alive=keep_alive)
    made.scope["method"] = "HEAD"
    asyncio.run(_send_all(made, START, BODY))
    # then: its head alone was written, before the response was complete (and before the close)
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 5\r\n" in transport.writes[0] and transport.writes[0].endswith(b"\r\n\r\n")
    assert completed == [transport.writes[0].decode()] and transport.closed is (not keep_alive)
