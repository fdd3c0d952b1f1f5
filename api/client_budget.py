"""How many requests of one client count for release decisions: pure logic, no metrics, no I/O.

A live decision (a rollout's canary or shadow, the bake) compares versions on
counted requests. Were every request counted, one client sending many could
outweigh everyone else, so each client counts at most DECISION_CLIENT_BUDGET
requests per second (per worker); past it, its requests are still answered,
only not counted. The client is the peer address, or, behind TRUSTED_PROXY_HOPS
proxies that append to X-Forwarded-For, the address the first trusted proxy
saw: the N-th entry from the right. Entries to its left are the client's own
words and never pick the key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

MAX_CLIENTS = 65_536  # clients tracked in one second; a client past them is not counted (client_table_full)
BUDGET = "client_budget"
TABLE_FULL = "client_table_full"
FORWARDED_FOR = b"x-forwarded-for"


def client_key(peer: tuple[str, int] | list[object] | None, headers: Iterable[tuple[bytes, bytes]], hops: int) -> str:
    """Who sent a request: the peer's address (hops 0), else the N-th X-Forwarded-For entry from the right.

    With fewer entries than hops the leftmost is taken; without the header, the peer.
    """
    address = str(peer[0]) if peer else ""
    if hops <= 0:
        return address
    entries: list[str] = []
    for name, value in headers:
        if name == FORWARDED_FOR:  # several header lines are one list, in order (RFC 9110)
            entries.extend(e for e in (part.strip() for part in value.decode("latin-1").split(",")) if e)
    if not entries:
        return address
    return entries[-hops] if len(entries) >= hops else entries[0]


class ClientBudget:
    """Counted requests per client in the current second, at most `per_second` each and `max_clients` clients."""

    def __init__(
        self, per_second: int, max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second, self.max_clients, self.clock = per_second, max_clients, clock
        self._counts: dict[str, int] = {}
        self._until = float("-inf")  # the current second ends then

    def take(self, client: str) -> str | None:
        """Count one request of `client`: None when it counts, else why not (BUDGET or TABLE_FULL)."""
        now = self.clock()
        if now >= self._until:
            self.clear(now)
        counts = self._counts
        seen = counts.get(client)
        if seen is None:
            if len(counts) >= self.max_clients:
                return TABLE_FULL
            counts[client] = 1
            return None
        if seen >= self.per_second:
            return BUDGET
        counts[client] = seen + 1
        return None

    def clear(self, now: float | None = None) -> None:
        """Start a new second: every client's count back to zero."""
        self._counts = {}
        self._until = (self.clock() if now is None else now) + 1.0
