"""POST /invocations, MLflow's scoring protocol, through the request path /predict takes (api/request_path.py).

A well-formed JSON body (api.model.scoring.well_formed_columns: every column
of exactly the schema's types, the customer's id too) is decoded into the same
columns /predict decodes and answered by the shared step: the same side for the
same customer, the same live counts and drift bins, the same decisions and
shadow copies. Anything else (CSV, nulls where MLflow decides, odd types,
values the model cannot score) takes the slow path, in a thread: production
reads it as MLflow's functions will (read_full), its customers choose the side
by the same rule, MLflow's functions answer, and the shared step counts the
answer (a canary chosen there with what /predict counts for the same records).
A side failing on a request (not a refusal of its values) is counted as its
error on either path, and answered in MLflow's words. A body production cannot
read chooses no side: production answers it (its refusal) and no decision counts it.
"""

from __future__ import annotations

import asyncio
import random
import time
from functools import partial

import orjson
from starlette.types import Scope

from api.holder import ModelHolder
from api.model.columns import Columns
from api.model.loaded_model import LoadedModel, Prediction
from api.model.online_store import ABSENT, StoreUnavailable
from api.model.schema import RequestError
from api.model.scoring import (
    RECORD_KEYS,
    FullRead,
    Scored,
    read_customers,
    read_full,
    read_records,
    score,
    score_with_mlflow,
    single_key_json,
    well_formed_columns,
)
from api.release.redact import redact
from api.release.traffic import Traffic
from api.request_path import Declined, Refused, RequestPath, records_body

# Bodies up to this size are answered on the event loop, as /predict's batches up to INLINE_RECORDS are
# (api/request_path.py says why); larger ones are read and predicted in a thread.
INLINE_BODY_BYTES = 256 * 1024
NOT_READY = "TEMPORARILY_UNAVAILABLE"
JSON_TYPES = ("application/json", "application/json;charset=utf-8")


class InvocationRoute:
    """The /invocations door: its decoder for the shared step, and MLflow's slow path for everything else."""

    def __init__(self, holder: ModelHolder, path: RequestPath) -> None:
        self.holder, self.path = holder, path

    async def answer(
        self, body: bytes, content_type: str, scope: Scope | None, request: str | None = None
    ) -> tuple[int, bytes | str, str | None]:
        """(status, JSON text, version for the header) for one request body, read whole just now.

        `request`: the request's id, under which a 200 goes to the prediction log (None: not logged). MLflow's
        answer stays `{"predictions": [...]}`: the ids are only in the app's X-Prediction-Id header.
        """
        started = time.perf_counter()  # the body read whole: the version's time starts
        # Read once: this request keeps these models even if a swap happens.
        production, canary, traffic = self.holder.current, self.holder.canary, self.holder.traffic
        if production is None:
            unavailable = {"error_code": NOT_READY, "message": self.holder.not_ready_reason}
            return 503, orjson.dumps(unavailable), None

        def decode(model: LoadedModel, raw: bytes) -> Columns:
            columns = well_formed_columns(model, raw, content_type)
            if columns is None and model.plan is not None:
                columns = by_id_columns(model, raw, content_type)
            if columns is None:
                raise Declined(None)
            return columns

        inline = len(body) <= INLINE_BODY_BYTES
        try:
            served = await self.path.answer(
                production, canary, traffic, decode, body, scope, started, records_body, quick=True, inline=inline,
                request=request,
            )  # fmt: skip
            answer: dict[str, object] = {"predictions": served.prediction.labels}
            if served.warnings:
                answer["warnings"] = served.warnings
            return 200, orjson.dumps(answer), served.model.version
        except StoreUnavailable as exc:
            unavailable = {"error_code": NOT_READY, "message": redact(exc.message), "reason": exc.reason}
            return 503, orjson.dumps(unavailable), production.version
        except Refused as refused:  # the canary's lookup refused the records
            return refused.error.status, orjson.dumps(mlflow_error(refused.error)), refused.model.version
        except RequestError as exc:  # production's lookup refused the records: nothing counted
            return exc.status, orjson.dumps(mlflow_error(exc)), production.version
        except Declined as declined:  # quick=True: the slow path words every refusal
            quick_side, records, counted = declined.model, declined.records, declined.counted
        side, read, chosen = quick_side or production, None, quick_side is not None
        try:
            if quick_side is None:
                side, read, chosen, records = await asyncio.to_thread(
                    _choose, production, canary, traffic, body, content_type
                )
            scored = await asyncio.to_thread(_score, side, quick_side is None, production, body, content_type, read)
        except Exception:  # answered 500 by the app: the version's error, once a side was chosen
            if chosen and not counted:
                self.path.failed(side, scope, started, records)
            raise
        if counted:  # the side failed on the quick path, counted there: this path only words it
            pass
        elif scored.failed:
            if chosen:
                self.path.failed(side, scope, started, scored.rows or records)
        elif scored.status == 200:
            await self._count(scored, side, chosen, production, canary, traffic, scope, started, inline, request)
        elif side is not production and scored.status < 500 and self.path.decisions.admit(scope):
            # The canary refused what production read: counted against it if production answers the body.
            accepted = await asyncio.to_thread(score, production, body, content_type)
            if accepted.status == 200:
                seconds = time.perf_counter() - started
                self.path.decisions.count(side.version, seconds, accepted.rows or 1, "refused")
        return scored.status, scored.text, side.version

    async def _count(
        self,
        scored: Scored,
        model: LoadedModel,
        chosen: bool,
        production: LoadedModel,
        canary: LoadedModel | None,
        traffic: Traffic,
        scope: Scope | None,
        started: float,
        inline: bool,
        request: str | None = None,
    ) -> None:
        """A slow path's 200, counted and logged by the shared step; a shadow copy as on the quick path."""
        labels = [] if scored.labels is None else scored.labels.tolist()
        columns = scored.columns or {}
        admitted = self.path.served(model, columns, labels, scored.probabilities, scope, started, counted=chosen)
        if request is not None and labels:
            self.path.logged(model, production, request, columns, labels, scored.probabilities)
        shadowed = canary is not None and traffic.mode == "shadow" and model is production
        if admitted and shadowed and scored.probabilities is not None and random.random() < traffic.shadow_share:
            assert canary is not None  # for mypy: `shadowed` says so
            prediction, copy = Prediction(labels, scored.probabilities), partial(records_body, columns)
            if inline:
                self.path.shadow.offer(canary, copy, prediction)
            else:
                await self.path.shadow.offer_built_in_thread(canary, copy, prediction)


def mlflow_error(exc: RequestError) -> dict[str, object]:
    """A lookup's refusal in MLflow's error shape, with its details."""
    code = "RESOURCE_DOES_NOT_EXIST" if exc.status == 404 else "INVALID_PARAMETER_VALUE"
    return {"error_code": code, **exc.answer()}


def by_id_columns(model: LoadedModel, body: bytes, content_type: str) -> Columns | None:
    """Records carrying only the customer's id (and request-time fields), features ABSENT; None: not such a body."""
    plan = model.plan
    if plan is None:  # not read by id: the body is not parsed here at all
        return None
    found = single_key_json(body, content_type)
    if found is None:
        return None
    key, payload = found
    if key == "dataframe_split":
        columns = model.by_id_types.from_split(payload, model.max_batch_size)
    elif key in RECORD_KEYS:
        columns = model.by_id_types.from_records(payload, model.max_batch_size)
        if columns is None and _mixes_ids(model, payload):  # some records by id, some in full: record by record
            return model.service_columns(orjson.dumps({"records": payload}))
    else:
        return None
    if columns is None or plan.spec.entity_field not in columns:
        return None
    count = len(columns[plan.spec.entity_field])
    return {**columns, **{f.name: [ABSENT] * count for f in plan.fetched}}


def _mixes_ids(model: LoadedModel, payload: object) -> bool:
    """Whether some record carries the customer's id and none of the features its service gives.

    MLflow's own reading would score such a record with every feature missing (imputed) and ignore its id.
    """
    plan = model.plan
    assert plan is not None
    field, fetched = plan.spec.entity_field, [f.name for f in plan.fetched]
    return isinstance(payload, list) and any(
        type(record) is dict and field in record and not any(name in record for name in fetched) for record in payload
    )


def _choose(
    production: LoadedModel, canary: LoadedModel | None, traffic: Traffic, body: bytes, content_type: str
) -> tuple[LoadedModel, FullRead | None, bool, int]:
    """(side, production's reading, whether a side was chosen, records) on MLflow's path.

    A body production cannot read chooses no side: production answers why.
    """
    try:
        read = read_full(production, body, content_type)
    except Exception:
        return production, None, False, 1
    model = RequestPath.side(production, canary, traffic, read_customers(read, production.entity_field))
    return model, read, True, read_records(read)


def _score(
    side: LoadedModel, quick: bool, production: LoadedModel, body: bytes, content_type: str, read: FullRead | None
) -> Scored:
    """The side's answer on MLflow's path (production's reading reused); never raises for a client.

    `quick`: a canary chosen here takes the quick reading where it can, as on
    the quick path, with what /predict counts for the same records.
    """
    if side is production or not quick:
        return score_with_mlflow(side, body, content_type, read)
    return score(side, body, content_type)
