"""`python -m api` with live counting off, for benchmarks/serve_vs_mlflow.py's side-by-side only.

The API has no switch for its live counts (predictions, positives, scores and
at most 64 records' feature values a request in its version's drift bins, api/live_stats.py), and must
not grow one for a benchmark: this launcher replaces `LiveStats.record` with a
no-op in this process, then starts the API exactly as `python -m api` does
(one worker: uvicorn imports the app in this process, so the patch holds).
With nothing recorded, the flush every second and before each scrape has
nothing to bin either. Everything else is the API as shipped.
"""

from __future__ import annotations

import os
import sys

from api import __main__ as entry
from api.live_stats import LiveStats


def _not_recorded(self: LiveStats, *args: object, **kwargs: object) -> None:
    """What a request costs when nothing is counted."""


if __name__ == "__main__":
    if int(os.environ.get("WEB_CONCURRENCY") or 1) != 1:
        sys.exit("one worker only: further workers would import the app unpatched")
    LiveStats.record = _not_recorded  # type: ignore[method-assign]
    entry.main()
