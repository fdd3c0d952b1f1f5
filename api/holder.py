"""Holds the serving model and swaps it atomically when the alias moves.

Requests read `holder.current` once and use that object to the end, so a swap
(one reference assignment) never changes the model under a request in flight.
A version that fails to load, or is refused (not released, changed since its
smoke, badly signed, unsafe format), never replaces what is serving; it is
tried again with backoff, not on every poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Protocol

from api.metrics import ServiceMetrics
from api.model.loaded_model import LoadedModel
from api.release.redact import plain_message, redact

log = logging.getLogger("api")
MAX_BACKOFF_S = 300.0
# A replica with nothing to serve retries sooner: it is not ready until a load succeeds.
MAX_BACKOFF_NOT_READY_S = 30.0


class ModelSource(Protocol):
    """Where the holder's models come from (RegistrySource, or a test's stand-in)."""

    def target_version(self) -> str:
        """The version that should be serving now."""
        ...

    def load(self, version: str) -> LoadedModel:
        """That version, checked and ready to answer; an exception (RefusedVersion with its reason) otherwise."""
        ...


class ModelHolder:
    """The serving model, swapped whole when the target version loads; what went wrong when it did not."""

    def __init__(self, source: ModelSource | None = None, model: LoadedModel | None = None) -> None:
        self.source = source
        self.current: LoadedModel | None = model
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.refused: dict[str, str] | None = None  # the last version refused, and why
        self.metrics: ServiceMetrics | None = None
        self._retry: dict[str, tuple[float, float]] = {}  # version -> (not before, next delay)

    def watch(self, metrics: ServiceMetrics) -> None:
        """Report into `metrics` from now on (the app's metrics), starting with what serves now."""
        self.metrics = metrics
        metrics.registry_up.set(1)
        self._serving(self.current, None)

    def _serving(self, model: LoadedModel | None, previous: LoadedModel | None) -> None:
        """The gauges of what serves: ready, the production version, which versions are loaded."""
        if self.metrics is None:
            return
        self.metrics.ready.set(1 if model is not None else 0)
        self.metrics.serving_version.set(float(model.version) if model and model.version.isdigit() else 0)
        if previous is not None:
            self.metrics.loaded.labels(previous.version, "production").set(0)
        if model is not None:
            self.metrics.loaded.labels(model.version, "production").set(1)

    @property
    def not_ready_reason(self) -> str:
        """Why no model answers: the last failure, or that none loaded yet, or that there is no source."""
        if self.last_error:
            return f"no model loaded: {self.last_error}"
        return "no model loaded yet" if self.source else "no model source configured"

    async def refresh(self, base_delay_s: float = 1.0) -> bool:
        """Load the target version if it is not the one serving; True when a swap happened."""
        if self.source is None:
            return False
        try:
            target = await asyncio.to_thread(self.source.target_version)
        except Exception as exc:  # registry down or alias missing: keep serving what we have
            self._failed(f"cannot resolve the model to serve: {_describe(exc)}", "unreachable")
            if self.metrics:
                self.metrics.registry_up.set(0)
            return False
        if self.metrics:
            self.metrics.registry_up.set(1)
        if self.current is not None and self.current.version == target:
            self.last_error = self.last_error_at = self.refused = None  # recovered, or the alias came back
            return False
        not_before, delay = self._retry.get(target, (0.0, base_delay_s))
        if time.monotonic() < not_before:
            return False
        try:
            model = await asyncio.to_thread(self.source.load, target)
        except Exception as exc:
            ceiling = MAX_BACKOFF_S if self.current is not None else MAX_BACKOFF_NOT_READY_S
            self._retry[target] = (time.monotonic() + delay, min(delay * 2, ceiling))
            reason = getattr(exc, "reason", None)
            if reason is not None:  # RefusedVersion: invariant 1, enforced by the server too
                self.refused = {"version": target, "reason": redact(reason), "at": _now()}
                self._failed(f"version {target} refused: {reason}", "refused")
            else:
                self._failed(f"loading version {target} failed: {_describe(exc)}", "failure")
            return False
        self._retry.pop(target, None)
        previous, self.current = self.current, model
        self.last_error = self.last_error_at = None
        if self.refused and self.refused["version"] == target:
            self.refused = None
        if self.metrics:
            self.metrics.reloads.labels("success").inc()
        self._serving(model, previous)
        was = previous.version if previous else None
        log.info("now serving version %s (was %s): %s", model.version, was, model.compile_note)
        return True

    async def poll_forever(self, interval_s: float) -> None:
        """Refresh every `interval_s` seconds, for as long as the app runs (its background task)."""
        while True:
            await self.refresh(base_delay_s=interval_s)
            await asyncio.sleep(interval_s)

    def _failed(self, message: str, result: str) -> None:
        self.last_error = plain_message(message, 600)  # shown on /ready and /model: no class, path or secret
        self.last_error_at = _now()
        if self.metrics:
            self.metrics.reloads.labels(result).inc()
        log.warning(self.last_error)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe(exc: Exception) -> str:
    """One line fit for /ready and /model: credentials redacted, no exception class, no file path."""
    return plain_message(getattr(exc, "message", None) or str(exc), 500) or "no reason given"
