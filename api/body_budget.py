"""The request body bytes one worker holds at once: MAX_BODY_BYTES_IN_FLIGHT, reserved per request.

A request's declared Content-Length (at most MAX_BODY_BYTES) is reserved when
its head is complete, a chunked body's bytes as they arrive; the reservation is
released when its response is complete or its connection closes (the protocol
in api/http_protocol.py does both). A body that does not fit is refused. Bodies
over 64 KiB may fill only 7/8 of the budget: the rest stays for small requests,
so a flood of large slow bodies cannot starve one-record predictions.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

# Bodies over this size may fill only LARGE_SHARE of the budget: the rest is kept for small requests.
LARGE_BODY_BYTES = 64 * 1024
LARGE_SHARE = 7 / 8
# Once this much (or a quarter of the budget) was released, memory goes back to the system (malloc_trim) a
# second later. Without it glibc kept what 40 unfinished 19 MB bodies had taken (~550 MB) after they closed: the
# freed body chunks stay in its heap, fragmented by whatever was allocated meanwhile. A trim costs about 0.1 ms
# per MB it returns (68 ms for 760 MB, measured), once, on the event loop.
TRIM_AFTER_BYTES = 32 * 1024 * 1024
TRIM_DELAY_S = 1.0


class BodyBudget:
    """The request body bytes one worker holds: reserved per request, refused past the limit.

    Touched only from the event loop (protocol callbacks): no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.large_limit = int(limit * LARGE_SHARE)
        self.in_flight = 0
        self.peak = 0
        self.refused = 0  # requests answered 503, since the start
        self._released = 0  # since the last trim
        self._trim_after = min(TRIM_AFTER_BYTES, limit // 4)
        self._trim: asyncio.TimerHandle | None = None

    def take(self, size: int, body_so_far: int) -> bool:
        """Reserve `size` more bytes for a body of `body_so_far` bytes (after them); False when they do not fit."""
        limit = self.large_limit if body_so_far + size > LARGE_BODY_BYTES else self.limit
        if self.in_flight + size > limit:
            self.refused += 1
            return False
        self.in_flight += size
        self.peak = max(self.peak, self.in_flight)
        return True

    def give(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        """Release `size` bytes; once enough were released, hand free memory back to the system soon."""
        if not size:
            return
        self.in_flight -= size
        self._released += size
        if self._released >= self._trim_after and self._trim is None and _MALLOC_TRIM is not None:
            self._trim = loop.call_later(TRIM_DELAY_S, self._trim_now)

    def _trim_now(self) -> None:
        self._trim, self._released = None, 0
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's malloc_trim (glibc's), or None where it has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols the process has loaded
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()
