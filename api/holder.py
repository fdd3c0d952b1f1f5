"""Holds the serving models and swaps them atomically when the aliases move.

Requests read `holder.current` (production) or `holder.canary` once and use
that object to the end, so a swap (one reference assignment) never changes
the model under a request in flight. A version that fails to load, or is
refused (not released, changed since its smoke, badly signed, unsafe format),
never replaces what is serving; it is tried again with backoff, not on every
poll. A canary goes through the same check: refused, it serves nothing and
production goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from api.metrics import ServiceMetrics
from api.model.loaded_model import LoadedModel
from api.release.redact import plain_message, redact
from api.release.traffic import OFF, Target, Traffic

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
    """The serving models (production, and a canary during a rollout); what went wrong when one did not load."""

    def __init__(self, source: ModelSource | None = None, model: LoadedModel | None = None) -> None:
        self.source = source
        self.current: LoadedModel | None = model
        self.canary: LoadedModel | None = None
        self.traffic: Traffic = OFF  # how requests are split; off unless the canary is loaded
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.refused: dict[str, str] | None = None  # the last version refused, and why
        self.refused_canary: dict[str, str] | None = None
        self.metrics: ServiceMetrics | None = None
        self.on_serve: Callable[[LoadedModel], object] | None = None  # told of each model as it starts serving
        self._retry: dict[str, tuple[float, float]] = {}  # version -> (not before, next delay)

    def watch(self, metrics: ServiceMetrics) -> None:
        """Report into `metrics` from now on (the app's metrics), starting with what serves now (a canary too)."""
        self.metrics = metrics
        metrics.registry_up.set(1)
        self._serving("production", self.current, None)
        if self.canary is not None:
            self._serving("canary", self.canary, None)

    @property
    def shadowed(self) -> LoadedModel | None:
        """The canary production's requests are copied to (shadow mode), if any."""
        return self.canary if self.traffic.mode == "shadow" else None

    @property
    def not_ready_reason(self) -> str:
        """Why no model answers: the last failure, or that none loaded yet, or that there is no source."""
        if self.last_error:
            return f"no model loaded: {self.last_error}"
        return "no model loaded yet" if self.source else "no model source configured"

    async def refresh(self, base_delay_s: float = 1.0) -> bool:
        """Load the target versions that are not the ones serving; True when production swapped."""
        if self.source is None:
            return False
        try:
            target = await asyncio.to_thread(self._target)
        except Exception as exc:  # registry down or alias missing: keep serving what we have
            self._failed(f"cannot resolve the model to serve: {_describe(exc)}", "unreachable")
            if self.metrics:
                self.metrics.registry_up.set(0)
            return False
        if self.metrics:
            self.metrics.registry_up.set(1)
        swapped = await self._follow_production(target.production, base_delay_s)
        await self._follow_canary(target, base_delay_s)
        await self._read_quality()
        return swapped

    async def _read_quality(self) -> None:
        """The serving versions' live quality verdicts into the metrics (a registry call each; kept on failure).

        A verdict gone, or no longer verifying, clears that version's quality gauges: a replica that read it before
        would otherwise keep exporting it while one started since exports nothing, and the two would disagree.
        """
        read = getattr(self.source, "quality", None)
        if self.metrics is None or not callable(read):
            return
        for model in (self.current, self.canary):
            if model is None:
                continue
            try:
                verdict = await asyncio.to_thread(read, model.version)
            except Exception as exc:  # the registry blinked: the last figures stand until the next poll
                log.debug("quality verdict of version %s not read: %s", model.version, type(exc).__name__)
                continue
            if verdict is None:
                self.metrics.forget_quality(model.version)
            else:
                self.metrics.live_quality(model.version, verdict.verdict, verdict.figures)

    def _target(self) -> Target:
        target = getattr(self.source, "target", None)  # a source that knows nothing of canaries serves production
        return target() if callable(target) else Target(self.source.target_version())  # type: ignore[union-attr]

    async def _follow_production(self, version: str, base_delay_s: float) -> bool:
        if self.current is not None and self.current.version == version:
            self.last_error = self.last_error_at = self.refused = None  # recovered, or the alias came back
            return False
        model = await self._load(version, base_delay_s, "production")
        if model is None:
            return False
        previous, self.current = self.current, model
        self.last_error = self.last_error_at = None
        if self.refused and self.refused["version"] == version:
            self.refused = None
        self._serving("production", model, previous)
        was = previous.version if previous else None
        log.info("now serving version %s (was %s): %s", model.version, was, model.compile_note)
        return True

    async def _follow_canary(self, target: Target, base_delay_s: float) -> None:
        """Load the canary the registry names (or let it go), and route to it only once it is loaded."""
        if target.canary is None:
            if self.canary is not None:
                log.info("canary %s let go: %s", self.canary.version, target.traffic.problem or "the rollout ended")
            self._set_canary(None, OFF)
            self.refused_canary = None
            return
        if self.canary is None or self.canary.version != target.canary:
            model = await self._load(target.canary, base_delay_s, "canary")
            if model is None:  # refused or not loadable: production answers everything
                self._set_canary(None, OFF)
                return
            self.refused_canary = None
            self._set_canary(model, target.traffic)
            log.info("canary version %s loaded: %s at %s", model.version, target.traffic.mode, target.traffic.weight)
            return
        self._set_canary(self.canary, target.traffic)

    def _set_canary(self, model: LoadedModel | None, traffic: Traffic) -> None:
        previous, self.canary, self.traffic = self.canary, model, traffic if model is not None else OFF
        if previous is not model:
            self._serving("canary", model, previous)
        if self.metrics:
            self.metrics.canary_weight.set(self.traffic.weight if self.traffic.mode == "canary" else 0)

    async def _load(self, version: str, base_delay_s: float, role: str) -> LoadedModel | None:
        """The version loaded through the release check, or None (recorded, retried later with backoff)."""
        not_before, delay = self._retry.get(version, (0.0, base_delay_s))
        if time.monotonic() < not_before:
            return None
        assert self.source is not None
        what = "canary " if role == "canary" else ""
        try:
            model = await asyncio.to_thread(self.source.load, version)
        except Exception as exc:
            ceiling = MAX_BACKOFF_S if self.current is not None else MAX_BACKOFF_NOT_READY_S
            self._retry[version] = (time.monotonic() + delay, min(delay * 2, ceiling))
            reason = getattr(exc, "reason", None)
            if reason is not None:  # RefusedVersion: invariant 1, enforced by the server too
                refused = {"version": version, "reason": redact(reason), "at": _now()}
                if role == "canary":
                    self.refused_canary = refused
                else:
                    self.refused = refused
                self._failed(f"{what}version {version} refused: {reason}", "refused", role)
            else:
                self._failed(f"loading {what}version {version} failed: {_describe(exc)}", "failure", role)
            return None
        self._retry.pop(version, None)
        if self.metrics:
            self.metrics.reloads.labels("success").inc()
        return model

    def _serving(self, role: str, model: LoadedModel | None, previous: LoadedModel | None) -> None:
        """The gauges of what serves: ready and the production version, and which versions are loaded in each role."""
        if self.metrics is None:
            return
        if role == "production":
            self.metrics.ready.set(1 if model is not None else 0)
            self.metrics.serving_version.set(float(model.version) if model and model.version.isdigit() else 0)
        if previous is not None:
            self.metrics.loaded.labels(previous.version, role).set(0)
        if model is not None:
            self.metrics.loaded.labels(model.version, role).set(1)
            if self.on_serve is not None:
                self.on_serve(model)

    async def poll_forever(self, interval_s: float) -> None:
        """Refresh every `interval_s` seconds, for as long as the app runs (its background task)."""
        while True:
            await self.refresh(base_delay_s=interval_s)
            await asyncio.sleep(interval_s)

    def _failed(self, message: str, result: str, role: str = "production") -> None:
        text = plain_message(message, 600)  # shown on /ready and /model: no class, path or secret
        if role == "production":
            self.last_error, self.last_error_at = text, _now()
        if self.metrics:
            self.metrics.reloads.labels(result).inc()
        log.warning(text)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe(exc: Exception) -> str:
    """One line fit for /ready and /model: credentials redacted, no exception class, no file path."""
    return plain_message(getattr(exc, "message", None) or str(exc), 500) or "no reason given"
