"""Every stage says what it does and how long it took (on stderr, so stdout stays parseable)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from api.release.redact import redact


def say(message: str) -> None:
    """Print one progress line on stderr, credentials redacted."""
    print(redact(message), file=sys.stderr, flush=True)


@contextmanager
def stage(name: str, what: str) -> Iterator[None]:
    """Announce a stage, then say whether it finished or stopped, and after how long."""
    say(f"▶ {name}: {what}")
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        say(f"✗ {name} stopped after {time.perf_counter() - started:.1f}s")
        raise
    say(f"✓ {name} done in {time.perf_counter() - started:.1f}s")
