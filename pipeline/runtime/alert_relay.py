"""The rollback relay: Alertmanager's webhook in, GitHub `repository_dispatch` (event type `rollback`) out.

`python -m pipeline alert-relay [--host H --port P]` listens for POST /alert
(deploy/alertmanager/alertmanager.yml's `rollback-relay` receiver). Every
firing alert labelled action="rollback" with a version label becomes one
dispatch of the rollback workflow, which rolls back only while production
still serves that version. Configured by environment:

- GITHUB_REPOSITORY (owner/name) and GITHUB_TOKEN (a token that may create
  repository dispatches: Contents write), required;
- GITHUB_API_URL (default https://api.github.com; GitHub Enterprise's API);
- ALERT_RELAY_TOKEN: when set, a request must carry `Authorization: Bearer`
  with it (Alertmanager's webhook `http_config.authorization`).

Answers: 200 with what was dispatched, ignored or already sent; 400 a body
that is not Alertmanager's webhook; 401 a missing or wrong bearer token; 404,
405, 411, 413 for the wrong path, method, no length or a body over 1 MiB; 502
when GitHub refused or could not be reached (Alertmanager then retries, and
what was dispatched is not dispatched again). Each alert is dispatched once
per fingerprint and start time while the relay runs. No token is ever logged.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from pipeline.ci.github import DispatchFailed, repository_dispatch
from pipeline.ci.progress import say
from pipeline.core import alerts
from pipeline.core.errors import ConfigError

MAX_BODY = 1 << 20
REMEMBERED = 10_000  # alert keys kept for deduplication (oldest forgotten first)


@dataclass(frozen=True)
class RelaySettings:
    """Where dispatches go and with which tokens (never printed: see __repr__)."""

    repository: str
    github_token: str
    api_url: str = "https://api.github.com"
    relay_token: str | None = None

    def __repr__(self) -> str:
        return f"RelaySettings(repository={self.repository!r}, api_url={self.api_url!r})"

    @classmethod
    def from_env(cls) -> RelaySettings:
        """Read from the environment (see the module); ConfigError naming what is missing or malformed."""
        repository, token = os.environ.get("GITHUB_REPOSITORY", ""), os.environ.get("GITHUB_TOKEN", "")
        missing = [name for name, value in (("GITHUB_REPOSITORY", repository), ("GITHUB_TOKEN", token)) if not value]
        if missing:
            raise ConfigError(f"alert-relay needs {' and '.join(missing)} in its environment")
        if repository.count("/") != 1 or not all(repository.split("/")):
            raise ConfigError(f"GITHUB_REPOSITORY must be OWNER/NAME, got {repository!r}")
        api_url = os.environ.get("GITHUB_API_URL") or "https://api.github.com"
        return cls(repository, token, api_url, os.environ.get("ALERT_RELAY_TOKEN") or None)


class Relay:
    """Turns webhook bodies into dispatches, each alert key at most once (thread-safe)."""

    def __init__(self, settings: RelaySettings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self._transport = transport
        self._lock = threading.Lock()
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._in_flight: set[str] = set()

    def authorized(self, authorization: str | None) -> bool:
        """Whether the request may be heard: no relay token set, or `Bearer <token>` matching it."""
        if self.settings.relay_token is None:
            return True
        expected = f"Bearer {self.settings.relay_token}".encode()
        return hmac.compare_digest((authorization or "").encode(), expected)

    def receive(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one webhook body."""
        try:
            decision = alerts.rollback_dispatches(alerts.parse_webhook(body))
        except alerts.MalformedWebhook as exc:
            return 400, {"error": str(exc)}
        answer: dict[str, Any] = {"dispatched": [], "already_sent": [], "failed": [], "ignored": decision.ignored}
        for dispatch in decision.dispatches:
            with self._lock:
                duplicate = dispatch.key in self._sent or dispatch.key in self._in_flight
                if not duplicate:
                    self._in_flight.add(dispatch.key)
            if duplicate:
                answer["already_sent"].append(dispatch.key)
                continue
            try:
                repository_dispatch(
                    self.settings.repository,
                    self.settings.github_token,
                    dispatch.body(),
                    self.settings.api_url,
                    transport=self._transport,
                )
            except DispatchFailed as exc:
                say(f"  relay: dispatch for {dispatch.reason!r} (version {dispatch.version}) failed: {exc}")
                answer["failed"].append({"alert": dispatch.key, "error": str(exc)})
            else:
                say(f"  relay: dispatched rollback of version {dispatch.version}: {dispatch.reason}")
                answer["dispatched"].append({"alert": dispatch.key, "version": dispatch.version})
                with self._lock:
                    self._sent[dispatch.key] = None
                    while len(self._sent) > REMEMBERED:
                        self._sent.popitem(last=False)
            finally:
                with self._lock:
                    self._in_flight.discard(dispatch.key)
        for reason in decision.ignored:
            say(f"  relay: ignored {reason}")
        return (502 if answer["failed"] else 200), answer


def handler_for(relay: Relay) -> type[BaseHTTPRequestHandler]:
    """The request handler class serving `relay` at POST /alert (and GET /health)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 15  # a client that stalls is dropped, its thread freed
        server_version = "rollback-relay"
        sys_version = ""

        def _answer(self, status: int, answer: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            """POST /alert: a webhook body from Alertmanager."""
            if self.path.split("?")[0] != "/alert":
                self._answer(404, {"error": "POST /alert"})
                return
            if not relay.authorized(self.headers.get("Authorization")):
                self._answer(401, {"error": "a bearer token is required"}, {"WWW-Authenticate": "Bearer"})
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._answer(411, {"error": "Content-Length required"})
                return
            if int(length) > MAX_BODY:
                self.close_connection = True
                self._answer(413, {"error": f"body over {MAX_BODY} bytes"})
                return
            status, answer = relay.receive(self.rfile.read(int(length)))
            self._answer(status, answer)

        def do_GET(self) -> None:
            """GET /health: 200 while the relay runs; /alert takes POST only."""
            if self.path == "/health":
                self._answer(200, {"status": "ok"})
            elif self.path.split("?")[0] == "/alert":
                self._answer(405, {"error": "POST /alert"}, {"Allow": "POST"})
            else:
                self._answer(404, {"error": "POST /alert"})

        def log_message(self, format: str, *args: Any) -> None:
            """Access lines through `say` (stderr, redacted); the request line only, never headers."""
            say(f"  relay: {self.address_string()} {format % args}")

    return Handler


def make_server(host: str, port: int, relay: Relay) -> ThreadingHTTPServer:
    """A threading HTTP server for `relay`, bound to host:port (port 0: a free one)."""
    server = ThreadingHTTPServer((host, port), handler_for(relay))
    server.daemon_threads = True
    return server
