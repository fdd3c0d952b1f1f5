"""The prediction service: `uvicorn api.app:app`.

`create_app` builds the app around a ModelHolder, so nothing loads at import
time and tests hand in a tiny model; the module-level `app` reads the
environment (MLFLOW_TRACKING_URI, MODEL_NAME, MODEL_ALIAS or MODEL_VERSION,
RELOAD_INTERVAL_S, MAX_BATCH_SIZE, MAX_BODY_BYTES, RELEASE_VERIFY_KEY).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.holder import ModelHolder
from api.limits import BodyLimitMiddleware
from api.live_stats import LiveStats
from api.metrics import VERSION_HEADER, MetricsMiddleware, ServiceMetrics
from api.model.loaded_model import LoadedModel
from api.model.schema import RequestError
from api.model.scoring import score, score_well_formed, score_with_mlflow
from api.openapi import document
from api.predict_route import PredictRoute
from api.release.redact import redact, redact_logging
from api.settings import Settings, apply_mlflow_http_defaults
from api.shadow import Shadow

# /invocations bodies up to this size are answered on the event loop, as /predict's
# batches up to INLINE_RECORDS are (api/predict_route.py says why).
INLINE_BODY_BYTES = 256 * 1024


class NotReady(Exception):
    """No model is serving yet: answered 503 with the reason."""


def create_app(holder: ModelHolder, settings: Settings | None = None) -> FastAPI:
    """The app serving `holder`'s model: its middlewares, routes and metrics (`settings` from the defaults if None)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    stats = LiveStats(metrics)
    shadow = Shadow(metrics, stats, settings.shadow_queue)
    holder.on_serve = stats.counts  # a version's series exist from its first moment, at zero
    holder.watch(metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_flush_forever(stats, lambda: shadow.follow(holder.shadowed)))]
        if holder.source is not None:
            # Load in the background: /health answers at once, /ready once a model is in.
            # A pinned version is polled too, so a first load that failed is retried.
            tasks.append(asyncio.create_task(holder.poll_forever(settings.reload_interval_s)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        shadow.follow(None)

    app = FastAPI(title="churn prediction API", lifespan=lifespan)
    # Innermost first: POST /predict is answered inside the body limit and the metrics.
    app.add_middleware(PredictRoute, holder=holder, stats=stats, shadow=shadow)
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
        model = holder.current  # read once, as serving_model() does
        canary, traffic = holder.canary, holder.traffic
        if model is not None and canary is not None and traffic.to_canary(request.headers.get("x-request-id")):
            model = canary
        if model is None:
            unavailable = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": holder.not_ready_reason}
            return JSONResponse(unavailable, status_code=503)
        body = await request.body()
        content_type = request.headers.get("content-type", "application/json")
        answer: tuple[int, bytes | str, int] | None  # (status, response text, rows predicted)
        if len(body) <= INLINE_BODY_BYTES:  # small and well formed: answered without a thread hop
            answer = score_well_formed(model, body, content_type)
            if answer is None:  # not `answer or ...`: mypy would type the thread's result as the left side, None too
                answer = await asyncio.to_thread(score_with_mlflow, model, body, content_type)
        else:
            answer = await asyncio.to_thread(score, model, body, content_type)
        status, text, rows = answer
        if status == 200:
            metrics.child(metrics.predictions, model.version).inc(rows)
        # Errors too: MLflow's {"error_code", "message"} shape, a 415 included (api/invocation_input.py).
        return Response(
            text, status_code=status, media_type="application/json", headers={VERSION_HEADER: model.version}
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        """200 only with a model loaded."""
        model = serving_model()
        return {"status": "ready", "version": model.version}

    @app.get("/model")
    async def model_info() -> JSONResponse:
        """What is serving (production, and a canary with its traffic during a rollout), and the last reload failure."""
        model = serving_model()
        canary, traffic = holder.canary, holder.traffic
        reload = {
            "last_reload_error": holder.last_error,
            "last_reload_error_at": holder.last_error_at,
            "refused": holder.refused,
        }
        rollout = {
            "canary": None if canary is None else {**canary.info, "refused": None},
            "traffic": {"mode": traffic.mode, "weight": traffic.weight, "shadow_share": traffic.shadow_share},
            "refused_canary": holder.refused_canary,
        }
        body = {**model.info, "target": redact(settings.target), **reload, **rollout}
        return JSONResponse(body, headers={VERSION_HEADER: model.version})

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format."""
        stats.flush()  # what was answered until now, binned
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _flush_forever(stats: LiveStats, tidy: Callable[[], object], interval_s: float = 1.0) -> None:
    """Bin what was answered every second, off the request path (every worker does it for its own answers).

    `tidy` runs beside it: the shadow scorer follows the canary being shadowed (and stops when none is).
    """
    while True:
        await asyncio.sleep(interval_s)
        stats.flush()
        tidy()


def _app_from_env() -> FastAPI:
    from api.source import RegistrySource

    redact_logging("uvicorn", "uvicorn.error", "api", "mlflow")
    apply_mlflow_http_defaults()
    settings = Settings.from_env()
    source = RegistrySource(settings, verify_key=settings.verify_key())
    return create_app(ModelHolder(source=source), settings)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.app:app` builds the app on first access, not at import time.
    if name == "app":
        return _app_from_env()
    raise AttributeError(name)
