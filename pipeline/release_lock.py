"""A registry-side lock around alias moves, so two releases never interleave.

The lock is a registered model named `<model>.release-lock`: creating a
registered model is atomic in every MLflow store (the loser gets
RESOURCE_ALREADY_EXISTS). Its tags say who holds it and until when; a holder
that died leaves a lock that expires and is then broken, with the reason
printed. Released in `finally`.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import CheckFailed
from pipeline.progress import say
from pipeline.provenance import actor

HOLDER, EXPIRES = "lock.holder", "lock.expires_at"


def lock_name(model: str) -> str:
    return f"{model}.release-lock"


@contextlib.contextmanager
def release_lock(client: MlflowClient, model: str, ttl_s: float = 300, wait_s: float = 180) -> Iterator[str]:
    """Hold the model's release lock for the block; CheckFailed if another holder keeps it past `wait_s`."""
    name = lock_name(model)
    holder = f"{actor()}:{secrets.token_hex(4)}"
    deadline = time.monotonic() + wait_s
    while True:
        expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
        try:
            client.create_registered_model(
                name,
                tags={HOLDER: holder, EXPIRES: expires.isoformat(timespec="seconds")},
                description=f"Held while the pipeline moves an alias of {model}. Delete only if its holder died.",
            )
            break
        except MlflowException as exc:
            # A store that loses the race looks the winner up to say so; if the winner
            # already released, that look-up fails with RESOURCE_DOES_NOT_EXIST: try again.
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        held_by, until = _current(client, name)
        if until is not None and until < datetime.now(UTC):
            say(f"  breaking the release lock of {held_by}: it expired at {until.isoformat(timespec='seconds')}")
            _delete(client, name)
            continue
        if time.monotonic() > deadline:
            raise CheckFailed(f"another release holds the lock on {model} ({held_by}, until {until}); try again later")
        time.sleep(0.1 + random.random() * 0.3)
    try:
        yield holder
    finally:
        if _current(client, name)[0] == holder:
            _delete(client, name)


def _current(client: MlflowClient, name: str) -> tuple[str | None, datetime | None]:
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None, None
        raise
    until = tags.get(EXPIRES)
    return tags.get(HOLDER), datetime.fromisoformat(until) if until else None


def _delete(client: MlflowClient, name: str) -> None:
    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
