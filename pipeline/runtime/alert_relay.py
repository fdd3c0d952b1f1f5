"""The alert relay: Alertmanager's webhook in, GitHub `repository_dispatch` (`rollback`, `retrain`) out.

`python -m pipeline alert-relay [--host H --port P]` listens for POST /alert
(deploy/alertmanager/alertmanager.yml's `rollback-relay` receiver). Every
firing alert labelled action="rollback" with a version label becomes one
dispatch of the rollback workflow, which rolls back only while production
still serves that version; one labelled action="retrain" (live quality short
of the gate) a dispatch of the retrain workflow, which changes nothing unless
its candidate beats production. Configured by environment:

- GITHUB_REPOSITORY (owner/name) and GITHUB_TOKEN (a token that may create
  repository dispatches: Contents write), required;
- GITHUB_API_URL (default https://api.github.com; GitHub Enterprise's API);
- ALERT_RELAY_TOKEN, required: a request must carry `Authorization: Bearer`
  with it (Alertmanager's webhook `http_config.authorization`); at least 16
  characters, and not env.example's `change-me` placeholder. Only
  ALERT_RELAY_INSECURE_NO_TOKEN=local-test-only starts a relay without one,
  and it says so at every start;
- ALERT_RELAY_WINDOW_S (default 1800, Alertmanager's repeat interval for the
  relay's route): each environment and version is dispatched at most once per
  window, and at most MAX_VERSIONS_PER_WINDOW versions in all; each
  environment's retrain at most once per window, never counted against the
  rollbacks' versions (a retrain cannot crowd out a rollback).

Answers: 200 with what was dispatched, ignored or already sent; 400 a body
that is not Alertmanager's webhook; 401 a missing or wrong bearer token; 404,
405, 411, 413 for the wrong path, method, no length or a body over 1 MiB; 502
when GitHub refused or could not be reached (Alertmanager then retries, and
what was dispatched is not dispatched again). A rollback is dispatched by
meaning: whatever the fingerprints and start times a sender picks, a flood
yields at most one dispatch per version and window, so it can neither spend
the token's API rate limit nor queue workflow runs. No token is ever logged.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from pipeline.ci.github import DispatchFailed, repository_dispatch
from pipeline.ci.progress import say
from pipeline.core import alerts
from pipeline.core.environment import GITHUB_API, PipelineEnv, RelayEnv
from pipeline.core.errors import ConfigError

MAX_BODY = 1 << 20
WINDOW_S = 1800.0
MAX_VERSIONS_PER_WINDOW = 3  # production's version, and a canary's or the one before it: more is not one incident
MIN_TOKEN = 16
INSECURE = ("ALERT_RELAY_INSECURE_NO_TOKEN", "local-test-only")


@dataclass(frozen=True)
class RelaySettings:
    """Where dispatches go and with which tokens (never printed: see __repr__)."""

    repository: str
    github_token: str
    api_url: str = GITHUB_API
    relay_token: str | None = None
    window_s: float = WINDOW_S

    def __repr__(self) -> str:
        return f"RelaySettings(repository={self.repository!r}, api_url={self.api_url!r})"

    @classmethod
    def from_env(cls, env: PipelineEnv | None = None) -> RelaySettings:
        """Checked from the environment's values (see the module); ConfigError naming what is missing or malformed."""
        env = env or PipelineEnv.read()
        repository, token = env.github.repository, env.github.token
        missing = [name for name, value in (("GITHUB_REPOSITORY", repository), ("GITHUB_TOKEN", token)) if not value]
        if missing:
            raise ConfigError(f"alert-relay needs {' and '.join(missing)} in its environment")
        if repository.count("/") != 1 or not all(repository.split("/")):
            raise ConfigError(f"GITHUB_REPOSITORY must be OWNER/NAME, got {repository!r}")
        api_url = env.github.api_url or GITHUB_API
        return cls(repository, token, api_url, _relay_token(env.relay), _window(env.relay))


def _relay_token(relay: RelayEnv) -> str | None:
    """ALERT_RELAY_TOKEN, checked; None only when the insecure local-test flag says so."""
    relay_token = relay.token
    if not relay_token:
        if relay.insecure_no_token == INSECURE[1]:
            return None
        raise ConfigError(
            "alert-relay needs ALERT_RELAY_TOKEN (Alertmanager sends it as a bearer token): without it anyone "
            f"who reaches the relay rolls production back ({INSECURE[0]}={INSECURE[1]} runs it open, for a local "
            "test only)"
        )
    if relay_token.lower().startswith("change-me"):
        raise ConfigError("ALERT_RELAY_TOKEN is still env.example's placeholder: set a random one")
    if len(relay_token) < MIN_TOKEN:
        raise ConfigError(f"ALERT_RELAY_TOKEN is shorter than {MIN_TOKEN} characters: set a random one")
    return relay_token


def _window(relay: RelayEnv) -> float:
    raw = relay.window_s or str(WINDOW_S)
    try:
        window = float(raw)
    except ValueError:
        window = -1.0
    if not 0 < window < float("inf"):
        raise ConfigError(f"ALERT_RELAY_WINDOW_S must be a positive number of seconds, got {raw!r}")
    return window


class Relay:
    """Turns webhook bodies into dispatches, each environment and version at most once a window (thread-safe)."""

    def __init__(
        self,
        settings: RelaySettings,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str, float] = {}  # environment/version -> when it was dispatched (or is being)

    def _claim(self, target: str) -> str | None:
        """Reserve `target` (environment/version) for a dispatch; None if granted, else why not."""
        now = self._clock()
        with self._lock:
            for old in [t for t, at in self._sent.items() if now - at >= self.settings.window_s]:
                del self._sent[old]
            if target in self._sent:
                return "already_sent"
            rollbacks = [t for t in self._sent if not t.endswith(f"/{alerts.RETRAIN_TARGET}")]
            if not target.endswith(f"/{alerts.RETRAIN_TARGET}") and len(rollbacks) >= MAX_VERSIONS_PER_WINDOW:
                return "rate_limited"
            self._sent[target] = now
            return None

    def authorized(self, authorization: str | None) -> bool:
        """Whether the request may be heard: no relay token set, or `Bearer <token>` matching it."""
        if self.settings.relay_token is None:
            return True
        expected = f"Bearer {self.settings.relay_token}".encode()
        return hmac.compare_digest((authorization or "").encode(), expected)

    def receive(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one webhook body."""
        try:
            decision = alerts.dispatches(alerts.parse_webhook(body))
        except alerts.MalformedWebhook as exc:
            return 400, {"error": str(exc)}
        answer: dict[str, Any] = {
            "dispatched": [], "already_sent": [], "rate_limited": [], "failed": [], "ignored": decision.ignored,
        }  # fmt: skip
        for dispatch in decision.dispatches:
            target = dispatch.key.rsplit("/", 1)[0]
            refused = self._claim(target)
            if refused:
                answer[refused].append(dispatch.key)
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
                with self._lock:  # not sent: Alertmanager's retry may try again
                    self._sent.pop(target, None)
                say(f"  relay: dispatch for {dispatch.reason!r} (version {dispatch.version}) failed: {exc}")
                answer["failed"].append({"alert": dispatch.key, "error": str(exc)})
            else:
                what = f"version {dispatch.version}" if dispatch.event_type == alerts.EVENT_TYPE else "production"
                say(f"  relay: dispatched {dispatch.event_type} of {what}: {dispatch.reason}")
                answer["dispatched"].append({"alert": dispatch.key, "version": dispatch.version})
        for reason in decision.ignored[:20]:
            say(f"  relay: ignored {reason}")
        if answer["rate_limited"]:
            say(f"  relay: {len(answer['rate_limited'])} dispatches over {MAX_VERSIONS_PER_WINDOW} versions a window")
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
