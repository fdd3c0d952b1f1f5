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
    """The main thread's signal state: critical-section depth, the pending signal, the last Interrupted raised."""

    depth: int
    pending: int | None
    raised: Interrupted | None


class Interrupted(InfrastructureError):
    """The command was stopped by a signal (exit 3); what it had started was finished or undone."""


_state: _State = {"depth": 0, "pending": None, "raised": None}


def _raise(signum: int) -> None:
    interrupted = Interrupted(
        f"interrupted by {signal.Signals(signum).name}: stopped with nothing half-done "
        "(no alias move without its ledger entry, the release lock let go)"
    )
    _state["raised"] = interrupted
    raise interrupted


def _handler(signum: int, _frame: FrameType | None) -> None:
    if _state["depth"]:
        _state["pending"] = signum
        return
    _raise(signum)


def within(exc: BaseException) -> Interrupted | None:
    """The Interrupted behind `exc`, if a library caught it and raised its own.

    MLflow's REST client chains it; pydantic-core, interrupted while it builds a validator, raises a SchemaError
    that does not. So the Interrupted this `handled` block raised counts too: whatever failed after a signal
    stopped the command failed because of it.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return _state["raised"]


@contextlib.contextmanager
def handled(*, then_block: bool = False) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into Interrupted for the block (a no-op off the main thread).

    `then_block`: the process ends after the block, whose outcome is decided once it has left it. The two
    signals are then blocked, so a late one cannot turn that outcome into a kill (exit -15 while the
    interpreter shuts down, its handlers already reset) or a wrong "nothing done".
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["raised"] = None
    previous = {sig: signal.signal(sig, _handler) for sig in HANDLED}
    try:
        yield
    finally:
        if then_block:
            signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
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
