"""A registry-side lock around alias moves, so two releases never interleave.

The lock is a queue of tickets: each release creates a model version of the
registered model `<model>.release-lock`, and the store numbers versions
atomically (a unique key, in every MLflow store). A release holds the lock
when no live ticket has a lower number. Every ticket carries its holder and an
expiry, renewed by the holder while it waits and while it holds; a ticket
whose holder died expires and is then passed over (and deleted), with the
reason printed. Nothing is ever deleted by name while someone else may hold
it, so taking over an expired lock is exclusive: exactly the next ticket in
line goes ahead. The holder deletes its own ticket when it lets go.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from api.release.check import is_not_found
from pipeline.ci.progress import say
from pipeline.ci.provenance import actor
from pipeline.core import interrupts
from pipeline.core.errors import CheckFailed

HOLDER, EXPIRES = "lock.holder", "lock.expires_at"
TICKET_SOURCE = "release-ticket:/lock"  # a ticket has no artifact; the store wants a source


def lock_name(model: str) -> str:
    """The registered model holding `model`'s release tickets."""
    return f"{model}.release-lock"


@contextlib.contextmanager
def release_lock(client: MlflowClient, model: str, ttl_s: float = 120, wait_s: float = 180) -> Iterator[str]:
    """Hold the model's release lock for the block; CheckFailed if the tickets ahead keep it past `wait_s`."""
    name = lock_name(model)
    holder = f"{actor()}:{secrets.token_hex(4)}"
    _ensure_lock_model(client, name, model)
    ticket: str | None = None
    renewal: _Renewal | None = None
    try:
        # A signal that lands while the ticket is taken is raised as the block
        # ends, so the ticket is known by then and the `finally` deletes it.
        with interrupts.deferred():
            ticket = client.create_model_version(
                name,
                source=TICKET_SOURCE,
                tags={HOLDER: holder, EXPIRES: _expiry(ttl_s)},
                description="release ticket",
                await_creation_for=0,
            ).version
        renewal = _Renewal(client, name, str(ticket), ttl_s)
        renewal.start()
        _wait_for_turn(client, name, model, int(ticket), time.monotonic() + wait_s)
        yield holder
    finally:
        with interrupts.deferred():
            if renewal is not None:
                renewal.stop()
            if ticket is not None:
                _delete(client, name, str(ticket))


def _wait_for_turn(client: MlflowClient, name: str, model: str, ticket: int, deadline: float) -> None:
    while True:
        ahead = []
        for mv in client.search_model_versions(f"name='{name}'"):
            if int(mv.version) >= ticket:
                continue
            until = _expires(mv)
            if until < datetime.now(UTC):
                say(f"  passing over the release lock of {mv.tags.get(HOLDER)}: it expired at {until:%H:%M:%S} UTC")
                _delete(client, name, str(mv.version))
            else:
                ahead.append(mv)
        if not ahead:
            return
        if time.monotonic() > deadline:
            first = min(ahead, key=lambda mv: int(mv.version))
            raise CheckFailed(
                f"another release holds the lock on {model} ({first.tags.get(HOLDER)}, until "
                f"{_expires(first).isoformat(timespec='seconds')}); try again later"
            )
        time.sleep(0.1 + random.random() * 0.3)


class _Renewal(threading.Thread):
    """Pushes the ticket's expiry forward every third of its lifetime until stopped."""

    def __init__(self, client: MlflowClient, name: str, ticket: str, ttl_s: float) -> None:
        super().__init__(daemon=True, name="release-lock-renewal")
        self.client, self.name, self.ticket, self.ttl_s = client, name, ticket, ttl_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.ttl_s / 3):
            with contextlib.suppress(MlflowException, OSError):  # a missed renewal is retried on the next beat
                self.client.set_model_version_tag(self.name, self.ticket, EXPIRES, _expiry(self.ttl_s))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def _expiry(ttl_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=ttl_s)).isoformat(timespec="milliseconds")


def _expires(mv: ModelVersion) -> datetime:
    """When a ticket expires; a ticket without a readable expiry lives as long as any from its creation."""
    try:
        return datetime.fromisoformat(mv.tags[EXPIRES])
    except (KeyError, ValueError):
        return datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) + timedelta(minutes=5)


def _ensure_lock_model(client: MlflowClient, name: str, model: str) -> None:
    try:
        client.create_registered_model(
            name, description=f"Release tickets of {model}: each alias move waits for the tickets before its own."
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _delete(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.delete_model_version(name, version)
    except MlflowException as exc:
        if not (is_not_found(exc) or exc.error_code == "INVALID_PARAMETER_VALUE"):
            raise
