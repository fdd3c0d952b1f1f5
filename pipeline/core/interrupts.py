"""SIGINT and SIGTERM stop a command cleanly: exit 3, one line, state left consistent.

Outside a critical section a signal raises Interrupted at once, so `finally`
blocks (the release lock) run. Inside `deferred()` (an alias move and its
ledger entry, taking or letting go of the lock) it waits: the section
finishes, then Interrupted is raised. Signals are handled in the main thread
only, as Python delivers them there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TypedDict

from pipeline.core.errors import InfrastructureError

HANDLED = (signal.SIGINT, signal.SIGTERM)


class _State(TypedDict):
    """The main thread's critical sections: how deep it is in them, and the signal waiting for the last to end."""

    depth: int
    pending: int | None


_state: _State = {"depth": 0, "pending": None}


class Interrupted(InfrastructureError):
    """The command was stopped by a signal (exit 3); what it had started was finished or undone."""


def _raise(signum: int) -> None:
    raise Interrupted(
        f"interrupted by {signal.Signals(signum).name}: stopped with nothing half-done "
        "(no alias move without its ledger entry, the release lock let go)"
    )


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state["depth"]:
        _state["pending"] = signum
        return
    _raise(signum)


def within(exc: BaseException) -> Interrupted | None:
    """The Interrupted behind `exc`, if a library caught it and raised its own (MLflow's REST client does)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into Interrupted for the block (a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state["pending"] = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A critical section: a signal that arrives inside waits until the block has finished.

    Only the main thread receives signals, so only there is anything deferred.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if not _state["depth"] and pending is not None:
            _state["pending"] = None
            _raise(pending)
