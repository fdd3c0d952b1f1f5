"""The one step both doors share: choose the version, predict, count, offer the shadow copy.

/predict (api/predict_route.py) and /invocations (api/invocation_route.py)
decode their body into the same columns (api.model.columns.Columns), each with
its own decoder, and hand it to `RequestPath.answer`. Production decodes first:
a body it refuses decides no side and is not counted. The records' customer ids
(ENTITY_ID_FIELD) choose the side (Traffic.to_canary: a customer's keyed
bucket, the same for the whole rollout; without a customer id, a random draw
per request); the canary decodes again with its own schema; the side predicts.
A version trained from a feature service reads what its records omit from
the online store by the record's customer id (api/model/online_store.py),
after its own decode: a lookup's refusal is a 4xx naming each record's
problem, a store down or slow a 503 (StoreUnavailable), counted by reason, on
either side: never a version's error, never in the release decisions.
Then the answer is counted once, wherever it came in: live stats and drift bins
(api/live_stats.py), the release decisions within the client's budget
(api/decisions.py), a shadow copy of a counted request (api/shadow.py), and
an entry in the prediction log under the request's id (api/prediction_log.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import orjson
from starlette.types import Scope

from api.decisions import Decisions, customers
from api.live_stats import LiveStats
from api.metrics import ServiceMetrics
from api.model.columns import Columns
from api.model.loaded_model import LoadedModel, Prediction
from api.model.online_store import FeatureLookupError, Lookup, StoreUnavailable
from api.model.schema import RequestError
from api.model.scoring import UNSCORABLE
from api.prediction_log import PredictionLog
from api.release.traffic import Traffic
from api.shadow import Shadow

# Batches up to this size are predicted on the event loop: a thread hop plus GIL
# contention costs more than the few milliseconds they take (measured: 1,000-row
# batches ran at 44 req/s through a thread, 81 req/s inline). Larger batches go
# to a worker thread so one huge request cannot stall the others for long.
INLINE_RECORDS = 2000

# A door's decoder: a body as one model's columns; RequestError (or Declined) when that model cannot read it.
Decode = Callable[[LoadedModel, bytes], Columns]


class Declined(Exception):
    """The door's quick reading declined the body, or the side could not score it: the door's slow path answers.

    `model` is the side already chosen (None: production could not read the body, no side is chosen), for
    `records` records. `counted`: the side failed on them, already counted as its error; the slow path only words it.
    """

    def __init__(self, model: LoadedModel | None, records: int = 0, counted: bool = False) -> None:
        super().__init__(model.version if model else "no side")
        self.model, self.records, self.counted = model, records, counted


class Refused(Exception):
    """The chosen side refused the request (`error`): the door answers it with that side's version."""

    def __init__(self, model: LoadedModel, error: RequestError) -> None:
        super().__init__(str(error))
        self.model, self.error = model, error


@dataclass(frozen=True, slots=True)
class Served:
    """The side that answered and its answer, one label and one probability per record."""

    model: LoadedModel
    prediction: Prediction
    warnings: list[dict[str, object]] = field(default_factory=list)  # stale features served (stale: warn)


class RequestPath:
    """Choose, predict and count: what every answered request goes through, whichever door it came in by."""

    def __init__(
        self,
        stats: LiveStats,
        shadow: Shadow,
        decisions: Decisions,
        lookup: Lookup | None = None,
        metrics: ServiceMetrics | None = None,
        log: PredictionLog | None = None,
    ) -> None:
        self.stats, self.shadow, self.decisions = stats, shadow, decisions
        self.lookup = lookup or Lookup(None, "churn", 0.05)  # no store: records by id are answered 503
        self.metrics = metrics
        self.log = log  # the prediction log (None: off)

    @staticmethod
    def side(
        production: LoadedModel, canary: LoadedModel | None, traffic: Traffic, ids: Sequence[object] | None
    ) -> LoadedModel:
        """The version that answers records naming these customers (None: they name none)."""
        return canary if canary is not None and traffic.to_canary(ids) else production

    async def answer(
        self,
        production: LoadedModel,
        canary: LoadedModel | None,
        traffic: Traffic,
        decode: Decode,
        body: bytes,
        scope: Scope | None,
        started: float,
        to_copy: Callable[[Columns], bytes] | None = None,
        quick: bool = False,
        inline: bool = True,
        request: str | None = None,
    ) -> Served:
        """The chosen side's answer to `body`, counted; read once by the caller: production, canary, traffic.

        `to_copy` makes the shadow's copy (a /predict body) from production's columns (None: the body is one).
        Production's RequestError propagates (no side, nothing counted); the
        side's is Refused. `quick`: values the side cannot score are Declined
        (the door's slow path words it); the side failing on them is counted as
        its error, then Declined too. `inline` False: a large body, decoded and
        predicted in a thread, its shadow copy built in one. `request`: the
        request's id, under which the answer goes to the prediction log (None: not logged).
        """
        decoded = decode(production, body) if inline else await asyncio.to_thread(decode, production, body)
        sent = decoded  # as the client sent the records (by id: the store's features ABSENT), for the log
        records = len(next(iter(decoded.values())))
        large = not inline or records > INLINE_RECORDS
        # No coroutine when there is nothing to read by id (most versions): each await costs about a microsecond.
        read, warnings = (decoded, []) if production.plan is None else await self.complete(production, decoded, large)
        if read is not decoded and to_copy is None:  # features read by id: the shadow's copy carries them
            to_copy = partial(_copy_for, canary.entity_field if canary else None, production.entity_field)
        decoded = read
        model, columns = self.side(production, canary, traffic, customers(decoded, production.entity_field)), decoded
        try:
            if model is not production:  # decoded with the canary's own schema, its own features read
                sent = columns = decode(model, body) if inline else await asyncio.to_thread(decode, model, body)
                columns, warnings = await self.complete(model, columns, large)
            prediction = await _predict(model, columns, True, quick) if large else _predict_now(model, columns, quick)
        except Declined:
            raise Declined(model, records) from None
        except StoreUnavailable:
            # The canary's own lookup found the store down or slow: the store's trouble, not the version's (anyone
            # can provoke it with large batches). Answered 503 with its reason, as production's is; never counted.
            raise
        except RequestError as exc:
            # The canary refused what production read: counted against the canary if production would answer it.
            if model is not production and self.decisions.admit(scope) and await _accepts(production, decoded):
                self.decisions.count(model.version, time.perf_counter() - started, records, "refused")
            raise Refused(model, exc) from None
        except Exception:  # the version's error: answered 500 by the app (/predict), in MLflow's words (quick)
            self.failed(model, scope, started, records)
            if quick:
                raise Declined(model, records, counted=True) from None
            raise
        admitted = self.served(model, columns, prediction.labels, prediction.probabilities, scope, started)
        if request is not None and self.log is not None:  # the prediction log: references handed over, no more
            role = "production" if model is production else "canary"
            self.log.append(model, role, request, sent, prediction.labels, prediction.probabilities)
        # Copies of counted requests only: no client weighs more in the shadow's counts than in the others.
        if admitted and canary is not None and traffic.mode == "shadow" and random.random() < traffic.shadow_share:
            # Built within the shadow's guard (a copy that cannot be made is the canary's loss), off the loop if large.
            copy = body if to_copy is None else partial(to_copy, decoded)
            if inline and records <= INLINE_RECORDS:
                self.shadow.offer(canary, copy, prediction)
            else:
                await self.shadow.offer_built_in_thread(canary, copy, prediction)
        return Served(model, prediction, warnings)

    async def complete(
        self, model: LoadedModel, columns: Columns, in_thread: bool
    ) -> tuple[Columns, list[dict[str, object]]]:
        """The records' omitted features read from the online store by id (the same columns when none is omitted).

        FeatureLookupError (4xx) and StoreUnavailable (503) propagate, counted in the metrics.
        """
        plan = model.plan
        if plan is None:
            return columns, []
        started = time.perf_counter()
        try:
            if in_thread:
                read, warnings, looked_up = await asyncio.to_thread(self.lookup.complete, plan, columns)
            else:
                read, warnings, looked_up = self.lookup.complete(plan, columns)
        except FeatureLookupError as exc:
            if self.metrics is not None:
                for reason, count in exc.counts.items():
                    self.metrics.child(self.metrics.lookup_records, reason).inc(count)
            raise
        except StoreUnavailable as exc:
            if self.metrics is not None:
                self.metrics.child(self.metrics.store_unavailable, exc.reason).inc()
            raise
        if looked_up and self.metrics is not None:
            self.metrics.lookup_latency.observe(time.perf_counter() - started)
            if warnings:
                self.metrics.child(self.metrics.lookup_records, "stale_served").inc(len(warnings))
            if looked_up > len(warnings):
                self.metrics.child(self.metrics.lookup_records, "served").inc(looked_up - len(warnings))
        return read, warnings

    def served(
        self,
        model: LoadedModel,
        columns: Columns,
        labels: Sequence[object],
        probabilities: Sequence[float] | None,
        scope: Scope | None,
        started: float,
        counted: bool = True,
    ) -> bool:
        """Count an answer: live stats and drift bins always, the release decisions within the client's budget.

        True when the decisions counted it. `counted` False: a request whose side was never chosen
        (production could not read it, on a slow path).
        """
        seconds = time.perf_counter() - started
        self.stats.record(model, columns, labels, probabilities)
        if not counted or not self.decisions.admit(scope):
            return False
        # One record, at random.
        positive = len(labels) > 0 and labels[int(random.random() * len(labels))] == model.positive_label
        self.decisions.count(model.version, seconds, len(labels) or 1, "positive" if positive else None)
        return True

    def logged(
        self,
        model: LoadedModel,
        production: LoadedModel,
        request: str,
        columns: Columns,
        labels: Sequence[object],
        probabilities: Sequence[float] | None,
    ) -> None:
        """Hand an answer to the prediction log (if on), in its side's role: references only, built at flush time."""
        if self.log is not None:
            self.log.append(model, "production" if model is production else "canary", request, columns, labels,
                            probabilities)  # fmt: skip

    def failed(self, model: LoadedModel, scope: Scope | None, started: float, records: int) -> None:
        """A 5xx: the answering version's error, counted within the client's budget."""
        if self.decisions.admit(scope):
            self.decisions.count(model.version, time.perf_counter() - started, records, "error")


async def _predict(model: LoadedModel, columns: Columns, in_thread: bool, quick: bool = False) -> Prediction:
    """The model's answer for decoded records; RequestError naming the values it cannot score (Declined: `quick`)."""
    if not in_thread:
        return _predict_now(model, columns, quick)
    try:
        return await asyncio.to_thread(model.predict_columns, columns)
    except UNSCORABLE as exc:
        raise _unscorable(model, columns, exc, quick) from None


def _predict_now(model: LoadedModel, columns: Columns, quick: bool = False) -> Prediction:
    """_predict on this thread."""
    try:
        return model.predict_columns(columns)
    except UNSCORABLE as exc:
        raise _unscorable(model, columns, exc, quick) from None


def _unscorable(model: LoadedModel, columns: Columns, exc: Exception, quick: bool) -> Exception:
    """What values the model could not score become: Declined (`quick`: the door words it), else a RequestError."""
    return Declined(model) if quick else model.unscorable(columns, exc)


def records_body(columns: Columns) -> bytes:
    """Columns as the /predict body the shadow scorer reads (`{"records": [...]}`; NaN as null)."""
    names = list(columns)
    values = [column.tolist() if hasattr(column, "tolist") else list(column) for column in columns.values()]
    return orjson.dumps({"records": [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]})


def _copy_for(canary_field: str | None, field: str | None, columns: Columns) -> bytes:
    """The shadow's copy of records whose features were read by id: the id kept only if the canary reads it."""
    if field is None or field == canary_field:
        return records_body(columns)
    return records_body({name: values for name, values in columns.items() if name != field})


async def _accepts(model: LoadedModel, columns: Columns) -> bool:
    """Whether `model` answers these records (it decoded them already) rather than refuse or fail on them."""
    try:
        await _predict(model, columns, len(next(iter(columns.values()))) > INLINE_RECORDS)
    except Exception:
        return False
    return True
