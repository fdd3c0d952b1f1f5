"""The prediction service: `uvicorn api.app:app`.

`create_app` builds the app around a ModelHolder, so nothing loads at import
time and tests hand in a tiny model; the module-level `app` reads the
environment (MLFLOW_TRACKING_URI, MODEL_NAME, MODEL_ALIAS or MODEL_VERSION,
RELOAD_INTERVAL_S, MAX_BATCH_SIZE, MAX_BODY_BYTES, RELEASE_VERIFY_KEY,
PREDICTION_LOG_URI and OUTCOMES_TOKEN: api/prediction_log.py, api/outcomes_route.py).
"""

import asyncio
import contextlib
import gc
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from api.body_limit import BodyLimitMiddleware
from api.client_budget import ClientBudget
from api.decisions import Decisions
from api.holder import ModelHolder
from api.http_protocol import budget
from api.invocation_route import InvocationRoute
from api.live_stats import LiveStats
from api.metrics import VERSION_HEADER, MetricsMiddleware, ServiceMetrics
from api.model.loaded_model import LoadedModel
from api.model.online_store import Lookup, open_store
from api.model.schema import RequestError
from api.openapi import document
from api.outcomes_route import Refused as OutcomesRefused
from api.outcomes_route import answer as outcomes_answer
from api.outcomes_route import authorized as outcomes_authorized
from api.predict_route import PATH as PREDICT_PATH
from api.predict_route import PredictRoute
from api.prediction_log import PREDICTION_ID_HEADER, PredictionLog
from api.prediction_log import request_id as prediction_request_id
from api.release.redact import redact, redact_logging
from api.request_path import RequestPath
from api.settings import Settings, apply_mlflow_http_defaults, current
from api.shadow import Shadow

# A 1,000-record request makes ~1,000 short-lived tuples (the decoder's transpose): at CPython's default
# young-generation threshold (700) nearly every such request ran a collection, ~0.12 ms of ~1.4. They die within
# the request, so a collection every 20,000 allocations finds little alive and stays cheap.
GC_YOUNG_THRESHOLD = 20_000


class NotReady(Exception):
    """No model is serving yet: answered 503 with the reason."""


class ChurnApp(FastAPI):
    """FastAPI, with /predict answered in front of its middleware stack by `predict` (api/predict_route.py)."""

    predict: PredictRoute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """/predict to its handler, everything else (lifespan included) to FastAPI."""
        if scope["type"] == "http" and scope["path"] == PREDICT_PATH:
            return await self.predict(scope, receive, send)
        return await super().__call__(scope, receive, send)


def create_app(holder: ModelHolder, settings: Settings | None = None) -> ChurnApp:
    """The app serving `holder`'s model: its middlewares, routes and metrics (`settings` from the defaults if None)."""
    settings = settings or Settings()
    metrics = ServiceMetrics(settings.shared_metrics)
    stats = LiveStats(metrics)
    shadow = Shadow(metrics, stats, settings.shadow_queue)
    decisions = Decisions(metrics, ClientBudget(settings.decision_client_budget), settings.trusted_proxy_hops)
    timeout_s = settings.feature_lookup_timeout_ms / 1000
    store = open_store(settings.feature_store_url, timeout_s) if settings.feature_store_url else None
    lookup = Lookup(store, settings.feast_project, timeout_s)  # records by customer id (api/model/online_store.py)
    log = (
        PredictionLog(settings.prediction_log_uri, settings.prediction_log_flush_s, settings.prediction_log_max_rows,
                      metrics, max_bytes=settings.prediction_log_max_bytes)
        if settings.prediction_log_uri
        else None
    )  # fmt: skip
    path = RequestPath(stats, shadow, decisions, lookup, metrics, log)  # the one step both doors share
    invocation_route = InvocationRoute(holder, path)

    def serving(model: LoadedModel) -> None:
        """A version's series exist from its first moment, at zero."""
        stats.counts(model)
        decisions.series(model.version)

    holder.on_serve = serving
    holder.watch(metrics)

    predict = PredictRoute(holder, path, metrics, settings.max_body_bytes)  # its limit and metrics its own

    def flush() -> None:
        predict.flush()
        stats.flush(serving=(holder.current, holder.canary))  # and let go of the versions swapped out
        decisions.flush()
        metrics.body_budget(budget().in_flight, budget().refused)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        tasks = [asyncio.create_task(_flush_forever(flush, lambda: shadow.follow(holder.shadowed)))]
        if log is not None:
            tasks.append(asyncio.create_task(log.run()))
        if holder.source is not None:
            # Load in the background: /health answers at once, /ready once a model is in.
            # A pinned version is polled too, so a first load that failed is retried.
            tasks.append(asyncio.create_task(holder.poll_forever(settings.reload_interval_s)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        flush()  # the last second's counts, before the process ends (several workers: their shared files)
        shadow.follow(None)
        if log is not None:  # a graceful stop (SIGTERM) writes what the log holds before the process ends
            await asyncio.to_thread(log.close)
        if store is not None:
            store.close()

    # FastAPI's native OpenTelemetry off: this API configures no provider, and asking on every request whether one
    # was configured (environment reads) cost ~4 µs of a one-record request's ~30 in process.
    app = ChurnApp(
        title="churn prediction API", lifespan=lifespan, telemetry={"tracing": False, "metrics": False, "logs": False}
    )
    app.predict = predict
    # Innermost first: every other route is answered inside the body limit and the metrics.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def serving_model() -> LoadedModel:
        # Read once: this request keeps this model even if a swap happens. A plain call, not a
        # FastAPI dependency: solving dependencies cost a third of a one-record request.
        model = holder.current
        if model is None:
            raise NotReady(holder.not_ready_reason)
        return model

    def openapi() -> dict[str, Any]:
        """Built per call: the record schema is the serving version's, and it changes with a swap."""
        model = holder.current
        if model is None:
            return document(app, None, settings.max_batch_size, None)
        return document(app, model.features, model.max_batch_size, model.version)

    # FastAPI's documented way to replace the schema, a method assigned on the instance, which mypy refuses.
    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"detail": redact(exc)}, status_code=503)

    @app.exception_handler(RequestError)
    async def bad_request(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.answer(), status_code=exc.status)

    # The scoring route first: the router tries routes in order (/predict never reaches it).
    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        """MLflow's scoring protocol: dataframe_split, dataframe_records, inputs, instances (JSON), or CSV."""
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        request_id = prediction_request_id(request.scope)
        status, text, version = await invocation_route.answer(body, content_type, request.scope, request_id)
        # Errors too: MLflow's {"error_code", "message"} shape, a 415 included (api/model/invocation_input.py).
        headers = {VERSION_HEADER: version} if version else {}
        if status == 200:  # MLflow's body stays as it is: record i's prediction id is `<this id>-<i>`
            headers[PREDICTION_ID_HEADER] = request_id
        return Response(text, status_code=status, media_type="application/json", headers=headers)

    @app.post("/outcomes")
    async def outcomes(request: Request) -> JSONResponse:
        """What became of predictions (api/outcomes_route.py): a bearer token (OUTCOMES_TOKEN) required."""
        authorization = request.headers.get("authorization")
        try:  # before the body is read: a caller without the token never gets to send one
            outcomes_authorized(authorization, settings.outcomes_token, settings.prediction_log_uri)
        except OutcomesRefused as refused:
            status, answer = refused.status, refused.body
        else:
            body = await request.body()
            status, answer = await outcomes_answer(
                authorization, body, settings.outcomes_token, settings.prediction_log_uri
            )
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(answer, status_code=status, headers=headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        """200 only with a model loaded, and the online store answering if that model reads one.

        The store is asked at most every Lookup.CHECK_S; any lookup in between tells as much.
        """
        model = serving_model()
        if model.plan is not None:
            down = lookup.health()
            if down is not None:
                raise NotReady(f"feature store unavailable ({down.reason}): {down.message}")
        return {"status": "ready", "version": model.version}

    @app.get("/model")
    async def model_info(request: Request) -> JSONResponse:
        """What is serving (production), and the last reload failure; a rollout's canary and traffic for the operator.

        The canary's details go only to a caller presenting MODEL_INFO_TOKEN as
        a bearer token: anyone else learns nothing of a rollout in progress.
        """
        model = serving_model()
        reload = {
            "last_reload_error": holder.last_error,
            "last_reload_error_at": holder.last_error_at,
            "refused": holder.refused,
        }
        body = {**model.info, "target": redact(settings.target), **reload}
        reader = getattr(holder.source, "traffic_reader", None)  # api/release/traffic_reading.py
        if reader is not None:
            body["canary_states"] = reader.control  # who steers traffic: said to everyone, unsigned or not
        if _operator(request.headers.get("authorization"), settings.model_info_token):
            canary, traffic = holder.canary, holder.traffic
            body |= {
                "canary": None if canary is None else {**canary.info, "refused": None},
                "traffic": traffic.describe(),
                "refused_canary": holder.refused_canary,
                "refused_traffic": None if reader is None else reader.report(),
            }
        return JSONResponse(body, headers={VERSION_HEADER: model.version})

    if settings.metrics_port is None:  # else served on that port only (api/__main__.py): 404 here

        @app.get("/metrics")
        async def prometheus() -> Response:
            """Prometheus text format."""
            flush()  # what was answered until now, binned
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _operator(authorization: str | None, token: str | None) -> bool:
    """Whether an Authorization header presents the configured bearer token (none configured: nobody does)."""
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


async def _flush_forever(flush: Callable[[], object], tidy: Callable[[], object], interval_s: float = 1.0) -> None:
    """Bin what was answered every second, off the request path (every worker does it for its own answers).

    `tidy` runs beside it: the shadow scorer follows the canary being shadowed (and stops when none is).
    """
    while True:
        await asyncio.sleep(interval_s)
        flush()
        tidy()


def _app_from_env() -> ChurnApp:
    from api.source import RegistrySource

    redact_logging("uvicorn", "uvicorn.error", "api", "mlflow")
    apply_mlflow_http_defaults()
    settings = current()
    source = RegistrySource(settings, verify_key=settings.verify_key())
    return create_app(ModelHolder(source=source), settings)


def __getattr__(name: str) -> ChurnApp:
    # `uvicorn api.app:app` builds the app on first access, not at import time.
    if name == "app":
        return _app_from_env()
    raise AttributeError(name)
