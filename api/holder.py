"""Holds the serving model and swaps it atomically when the alias moves.

Requests read `holder.current` once and use that object to the end, so a swap
(one reference assignment) never changes the model under a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

from api.loaded_model import LoadedModel
from api.metrics import ServiceMetrics

log = logging.getLogger("api")


class ModelSource(Protocol):
    def target_version(self) -> str: ...
    def load(self, version: str) -> LoadedModel: ...


class ModelHolder:
    def __init__(self, source: ModelSource | None = None, model: LoadedModel | None = None):
        self.source = source
        self.current: LoadedModel | None = model
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.metrics: ServiceMetrics | None = None

    @property
    def not_ready_reason(self) -> str:
        if self.last_error:
            return f"no model loaded: {self.last_error}"
        return "no model loaded yet" if self.source else "no model source configured"

    async def refresh(self) -> bool:
        """Load the target version if it is not the one serving; True when a swap happened."""
        if self.source is None:
            return False
        try:
            target = await asyncio.to_thread(self.source.target_version)
        except Exception as exc:  # registry down or alias missing: keep serving what we have
            self._failed(f"cannot resolve the model to serve: {_describe(exc)}", count=False)
            return False
        if self.current is not None and self.current.version == target:
            return False
        try:
            model = await asyncio.to_thread(self.source.load, target)
        except Exception as exc:
            self._failed(f"loading version {target} failed: {_describe(exc)}")
            return False
        previous = self.current.version if self.current else None
        self.current = model
        self.last_error = self.last_error_at = None
        if self.metrics:
            self.metrics.reloads.labels("success").inc()
            self.metrics.serving_version.set(float(model.version) if model.version.isdigit() else 0)
        log.info("now serving version %s (was %s): %s", model.version, previous, model.compile_note)
        return True

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)

    def _failed(self, message: str, count: bool = True) -> None:
        self.last_error = message
        self.last_error_at = datetime.now(UTC).isoformat(timespec="seconds")
        if self.metrics and count:
            self.metrics.reloads.labels("failure").inc()
        log.warning(message)


def _describe(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]
