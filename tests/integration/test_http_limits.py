"""HTTP limits (api/http_protocol.py, api/body_budget.py) against `python -m api`, raw sockets as hostile clients.

The API has no model (MODEL_NAME=nothing): /health answers 200 and POST /predict reads its
body and answers 503, which is all the HTTP layer needs. Short deadlines keep the file fast.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipeline.runtime.processes import free_port, stop, wait_for

from ..conftest import ROOT

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 1
BODY_TIMEOUT_S = 1
KEEP_ALIVE_TIMEOUT_S = 1
MAX_HEADER_BYTES = 32768  # the default
MIB = 1024 * 1024
BUDGET = 24 * MIB  # MAX_BODY_BYTES_IN_FLIGHT: bodies over 64 KiB may fill 21 MiB of it, MAX_BODY_BYTES is 20 MiB
SLACK_S = 2.0  # scheduling on a loaded machine: a deadline of 1 s is met in under 1 + SLACK_S
HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


class Api:
    def __init__(self, process: subprocess.Popen, port: int):
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def memory_kb(self, field: str) -> int:
        """VmRSS (now) or VmHWM (the peak so far) of the server process, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")


def api_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'x.db'}",
        "MODEL_NAME": "nothing",
        "RELOAD_INTERVAL_S": "3600",
        "WEB_CONCURRENCY": "1",  # one process: its pid is the server's
        "HOST": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One `python -m api` (as uvicorn_process starts it, keeping the pid) for the module."""
    tmp = tmp_path_factory.mktemp("http-limits")
    port = free_port()
    env = api_env(
        tmp,
        PORT=str(port),
        HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        KEEP_ALIVE_TIMEOUT_S=str(KEEP_ALIVE_TIMEOUT_S),
        MAX_BODY_BYTES_IN_FLIGHT=str(BUDGET),
    )
    env.pop("MAX_HEADER_BYTES", None)
    env.pop("MAX_BODY_BYTES", None)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(f"http://127.0.0.1:{port}/health", 60, process)
            yield Api(process, port)
        finally:
            stop(process)
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:])


# Raw HTTP


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response (with a content-length) from `sock`; `buffer` keeps what was read past it."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response's head; got {bytes(buffer)[:200]!r}")
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[: len(head) + 4]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("closed inside a response's body")
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return int(status_line.split()[1]), headers, body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (an error if it does not within the socket's timeout)."""
    received = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


def refusal(received: bytes) -> tuple[int, dict[str, str], dict]:
    """The one error answer a refused connection gets before it is closed: status, headers, JSON body."""
    buffer = bytearray(received)
    status, headers, body = read_response(_NoSocket(), buffer)
    assert not buffer, f"more after the error answer: {bytes(buffer)[:200]!r}"
    return status, headers, json.loads(body)


class _NoSocket:
    def recv(self, _: int) -> bytes:
        return b""


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + extra + b"\r\n" + body


def assert_closed_after(api: Api, send, deadline_s: float) -> tuple[int, dict]:
    """Open a connection, run `send(sock)`, and check the server answers and closes it after `deadline_s`."""
    with api.connect() as sock:
        started = time.monotonic()
        send(sock)
        received = read_until_closed(sock)
        elapsed = time.monotonic() - started
    status, headers, body = refusal(received)
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    assert deadline_s - 0.1 <= elapsed <= deadline_s + SLACK_S, elapsed
    return status, body


def trickle(data: bytes, every_s: float, stop_after_s: float):
    """A sender that writes `data` one byte at a time until the server closes or `stop_after_s` passes."""

    def send(sock: socket.socket) -> None:
        def run() -> None:
            ends = time.monotonic() + stop_after_s
            for byte in data:
                if time.monotonic() > ends:
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return
                time.sleep(every_s)

        threading.Thread(target=run, daemon=True).start()

    return send


# Header size


def test_header_over_the_limit_is_431_and_the_connection_closed(api):
    with api.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n")
        status, headers, body = refusal(read_until_closed(sock))
    assert status == 431 and headers["connection"] == "close"
    assert body == {"detail": f"request line and headers exceed {MAX_HEADER_BYTES} bytes"}


def test_header_just_under_the_limit_is_answered(api):
    head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: \r\n\r\n"
    with api.connect() as sock:
        sock.sendall(head.replace(b"X-Big: ", b"X-Big: " + b"a" * (MAX_HEADER_BYTES - len(head))))
        assert read_response(sock, bytearray())[0] == 200


def test_a_100_mb_header_is_cut_off_and_memory_stays_flat(api):
    before = api.memory_kb("VmRSS")
    sent, chunk = 0, b"a" * (1 << 20)
    with api.connect() as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
            while sent < 150 * len(chunk):
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server stopped reading, then closed
            pass
        status, _, _ = refusal(read_until_closed(sock))
    peak = api.memory_kb("VmHWM")
    assert status == 431
    assert sent < 50 * len(chunk), f"the server read {sent} bytes of header"  # what socket buffers hold, no more
    assert peak - before < 20_000, f"RSS {before} kB before, peak {peak} kB"


def test_a_pipelined_request_over_the_limit_gets_431_after_the_answers_before_it(api):
    big = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    with api.connect() as sock:
        sock.sendall(HEALTH + post("/predict", b"{}") + big + HEALTH)
        received = read_until_closed(sock)
    buffer = bytearray(received)
    assert read_response(_NoSocket(), buffer)[0] == 200
    assert read_response(_NoSocket(), buffer)[0] == 503  # no model: /predict read its body and answered
    assert refusal(bytes(buffer))[0] == 431  # and nothing after it is answered


def test_a_head_request_is_answered_closing_or_pipelined_before_a_refusal(api):
    # given: HEAD over HTTP/1.0 (the connection closes after it), as health checkers send it
    with api.connect() as sock:
        sock.sendall(b"HEAD /health HTTP/1.0\r\n\r\n")
        received = read_until_closed(sock)
    # then: its head (FastAPI's 405: /health is a GET route) arrives before the close, no body
    assert received.startswith(b"HTTP/1.1 405 ") and received.endswith(b"\r\n\r\n")
    # given: a kept-alive HEAD and, in the same write, a request over the header limit
    big = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    with api.connect() as sock:
        sock.sendall(b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n" + big)
        received = read_until_closed(sock)
    # then: the HEAD's head first, then the 431, in order
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and refusal(rest)[0] == 431


def test_health_answers_fast_while_hostile_clients_stream_and_trickle_headers(api):
    stop_at = time.monotonic() + 3

    def stream() -> None:  # a large header, again and again
        chunk = b"a" * (1 << 20)
        while time.monotonic() < stop_at:
            with api.connect() as sock:
                try:
                    sock.sendall(b"GET /health HTTP/1.1\r\nX: ")
                    while time.monotonic() < stop_at:
                        sock.sendall(chunk)
                except OSError:
                    pass

    def drip() -> None:  # a header one byte at a time, on fresh connections
        while time.monotonic() < stop_at:
            with api.connect() as sock:
                try:
                    for byte in b"GET /health HTTP/1.1\r\nX: " + b"a" * 1000:
                        sock.send(bytes([byte]))
                        time.sleep(0.01)
                        if time.monotonic() > stop_at:
                            break
                except OSError:
                    pass

    hostile = [threading.Thread(target=target, daemon=True) for target in (stream, drip, stream)]
    for thread in hostile:
        thread.start()
    slowest = 0.0
    with httpx.Client(base_url=api.url, timeout=5) as http:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            with httpx.Client(base_url=api.url, timeout=5) as fresh:  # a new connection, as a healthcheck opens
                assert fresh.get("/health").status_code == 200
            assert http.get("/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
    for thread in hostile:
        thread.join(10)
    assert slowest < 1.0, f"/health took {slowest:.2f}s"


# Deadlines


def test_a_partial_header_is_closed_after_the_header_timeout(api):
    status, body = assert_closed_after(
        api, lambda s: s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n"), HEADER_TIMEOUT_S
    )
    assert status == 408 and body == {"detail": f"request headers not complete within {HEADER_TIMEOUT_S} s"}


def test_a_silent_connection_is_closed_after_the_header_timeout(api):
    status, _ = assert_closed_after(api, lambda s: None, HEADER_TIMEOUT_S)
    assert status == 408


def test_a_trickled_header_cannot_outlive_the_header_timeout(api):
    slowloris = trickle(b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"X: a\r\n" * 100, 0.05, 10)
    status, _ = assert_closed_after(api, slowloris, HEADER_TIMEOUT_S)
    assert status == 408


def test_a_body_shorter_than_its_content_length_gets_408_after_the_body_timeout(api):
    status, body = assert_closed_after(
        api, lambda s: s.sendall(post("/predict", b'{"records": []}')[:-5]), BODY_TIMEOUT_S
    )
    assert status == 408 and body == {"detail": f"request body not complete within {BODY_TIMEOUT_S} s"}


def test_a_trickled_body_cannot_outlive_the_body_timeout(api):
    request = post("/predict", b'{"records": [' + b" " * 200 + b"]}")
    head, _, body = request.partition(b"\r\n\r\n")

    def send(sock: socket.socket) -> None:
        sock.sendall(head + b"\r\n\r\n")
        trickle(body, 0.02, 10)(sock)  # 4 s for the whole body, 50 bytes a second

    status, _ = assert_closed_after(api, send, BODY_TIMEOUT_S)
    assert status == 408


def test_a_body_left_unfinished_after_an_early_answer_is_closed_after_the_body_timeout(api):
    with api.connect() as sock:
        buffer = bytearray()
        sock.sendall(post("/health", b"{" * 100)[:-90])  # 405 without reading the body; 90 bytes never come
        assert read_response(sock, buffer)[0] == 405
        answered = time.monotonic()
        assert read_until_closed(sock) == b""  # no second answer
        waited = time.monotonic() - answered
    assert BODY_TIMEOUT_S - 0.2 <= waited <= BODY_TIMEOUT_S + SLACK_S, waited


def test_the_header_timeout_starts_again_with_each_request(api):
    with api.connect() as sock:
        buffer = bytearray()
        for _ in range(3):  # each head sent in two halves, 0.6 s apart: 1.8 s on the connection in all
            sock.sendall(HEALTH[:20])
            time.sleep(0.6)
            sock.sendall(HEALTH[20:])
            assert read_response(sock, buffer)[0] == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(api):
    with api.connect() as sock:
        buffer = bytearray()
        sock.sendall(HEALTH)
        assert read_response(sock, buffer)[0] == 200
        answered = time.monotonic()
        assert read_until_closed(sock) == b""  # closed without a word
        idle = time.monotonic() - answered
    assert KEEP_ALIVE_TIMEOUT_S - 0.1 <= idle <= KEEP_ALIVE_TIMEOUT_S + SLACK_S, idle


# Normal traffic


def test_a_large_body_sent_in_pieces_is_read_whole(api):
    records = [{"tenure": i, "contract": "Month-to-month", "monthly_charges": 70.5} for i in range(50_000)]
    body = json.dumps({"records": records}).encode()
    assert 2_000_000 < len(body) < 20 * 1024 * 1024  # a few MB, under MAX_BODY_BYTES
    with api.connect() as sock:
        buffer = bytearray()
        request = post("/predict", body)
        for start in range(0, len(request), 500_000):  # in pieces, a little apart (within BODY_TIMEOUT_S)
            sock.sendall(request[start : start + 500_000])
            time.sleep(0.05)
        status, _, answer = read_response(sock, buffer)
        assert status == 503 and b"no model loaded" in answer  # the app read the whole body and answered
        sock.sendall(HEALTH)  # the connection is still open
        assert read_response(sock, buffer)[0] == 200


def test_several_requests_on_one_keep_alive_connection(api):
    with api.connect() as sock:
        buffer = bytearray()
        for _ in range(5):
            sock.sendall(HEALTH)
            assert read_response(sock, buffer)[0] == 200
            sock.sendall(post("/predict", b'{"records": []}'))
            assert read_response(sock, buffer)[0] == 503
            time.sleep(0.1)  # idle a while, under KEEP_ALIVE_TIMEOUT_S
        assert not buffer


def test_pipelined_requests_are_all_answered_in_order(api):
    requests = [HEALTH, post("/predict", b'{"records": []}'), b"GET /ready HTTP/1.1\r\nHost: t\r\n\r\n"] * 20
    with api.connect() as sock:
        sock.sendall(b"".join(requests))
        buffer = bytearray()
        statuses = [read_response(sock, buffer)[0] for _ in requests]
    assert statuses == [200, 503, 503] * 20


def test_a_pipelined_request_split_across_reads_is_answered(api):
    with api.connect() as sock:
        sock.sendall(HEALTH + HEALTH[:10])
        time.sleep(0.3)
        sock.sendall(HEALTH[10:])
        buffer = bytearray()
        assert [read_response(sock, buffer)[0] for _ in range(2)] == [200, 200]


# The body budget (MAX_BODY_BYTES_IN_FLIGHT) and what the metrics count


def head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


def held_body(api: Api, length: int, sent: int) -> socket.socket:
    """A connection whose request declares `length` bytes of body and sends `sent` of them (the budget reserves all)."""
    sock = api.connect()
    sock.sendall(head("/predict", length) + b" " * sent)
    return sock


def metric(api: Api, line_start: str) -> float:
    text = httpx.get(api.url + "/metrics", timeout=10).text
    found = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_body_past_the_budget_gets_503_with_retry_after_before_it_is_read_and_fits_once_one_ends(api):
    refused_before = metric(api, "api_body_budget_refused_total")
    with held_body(api, 20 * MIB, 1 * MIB):  # 20 of the 21 MiB large bodies may hold: 1 MiB sent, 19 to come
        time.sleep(0.2)
        with api.connect() as second:
            second.sendall(head("/predict", 2 * MIB))  # its body is never sent: refused on its head alone
            status, headers, body = refusal(read_until_closed(second))
        with api.connect() as small:  # a one-record request still fits: the last 1/8 is for bodies up to 64 KiB
            small.sendall(post("/predict", b'{"records": [{"tenure": 1}]}'))
            small_status, _, small_body = read_response(small, bytearray())
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert body == {"detail": f"request bodies in flight would exceed {BUDGET} bytes; try again shortly"}
    assert small_status == 503 and b"no model loaded" in small_body  # the app read it and answered (no model here)
    time.sleep(0.2)  # the held connection closed: its 20 MiB are released
    with api.connect() as again:
        again.sendall(post("/predict", b" " * (2 * MIB - 2) + b"{}"))
        status, _, body = read_response(again, bytearray())
    assert status == 503 and b"no model loaded" in body  # read whole this time
    assert metric(api, "api_body_budget_refused_total") == refused_before + 1
    assert metric(api, "api_body_bytes_in_flight") == 0


def test_a_chunked_body_growing_past_the_budget_gets_503_and_the_connection_closed(api):
    with held_body(api, 20 * MIB, 1000), api.connect() as chunked:
        time.sleep(0.2)
        chunked.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (256 * 1024, b" " * (256 * 1024))
        try:
            for _ in range(8):  # 2 MiB, past the 1 MiB left
                chunked.sendall(piece)
        except OSError:  # refused and closed while sending
            pass
        status, headers, body = refusal(read_until_closed(chunked))
    assert status == 503 and headers["retry-after"] == "1"
    assert body == {"detail": f"request bodies in flight would exceed {BUDGET} bytes"}


def test_a_client_leaving_mid_body_is_counted_499_and_a_body_timeout_408_never_500(api):
    before = {
        code: metric(api, f'api_requests_total{{endpoint="/predict",status="{code}",version=""}}')
        for code in ("499", "408")
    }
    with api.connect() as sock:
        sock.sendall(post("/predict", b'{"records": []}' + b" " * 100)[:-50])  # then it leaves
    status, _ = assert_closed_after(
        api, lambda s: s.sendall(post("/predict", b"{}" + b" " * 100)[:-50]), BODY_TIMEOUT_S
    )
    assert status == 408
    time.sleep(0.2)
    text = httpx.get(api.url + "/metrics", timeout=10).text
    after = {
        code: metric(api, f'api_requests_total{{endpoint="/predict",status="{code}",version=""}}')
        for code in ("499", "408")
    }
    assert after == {"499": before["499"] + 1, "408": before["408"] + 1}
    assert 'endpoint="/predict",status="500"' not in text


# Settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_HEADER_BYTES", "abc"),
        ("MAX_HEADER_BYTES", "0"),
        ("HEADER_TIMEOUT_S", "-1"),
        ("BODY_TIMEOUT_S", "nan"),
        ("MAX_BODY_BYTES_IN_FLIGHT", str(8 * MIB)),  # under 8/7 of MAX_BODY_BYTES (20 MiB)
        ("METRICS_PORT", "70000"),
    ],
)
def test_an_invalid_setting_stops_the_start_with_exit_2_and_one_line_naming_it(tmp_path, name, value):
    env = api_env(tmp_path, PORT=str(free_port()), **{name: value})
    done = subprocess.run([sys.executable, "-m", "api"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}={value!r} "), done.stderr


def test_a_placeholder_secret_stops_the_start_naming_the_setting_never_the_value(tmp_path):
    placeholders = {"MLFLOW_TRACKING_PASSWORD": "change-me-api-password", "MODEL_INFO_TOKEN": "Change-Me-token-1"}
    env = api_env(tmp_path, PORT=str(free_port()), **placeholders)
    done = subprocess.run([sys.executable, "-m", "api"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        "MLFLOW_TRACKING_PASSWORD, MODEL_INFO_TOKEN still hold a 'change-me' placeholder (env.example's): "
        "set the real secret"
    )
