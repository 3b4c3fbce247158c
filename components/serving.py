"""The REST service: a FastAPI app around whichever model version the loader returns.

The app knows nothing of MLflow: it is given a `loader` that returns the model to serve (the
current champion, say) and polls it, so a promotion reaches the running service without a
restart. Bad input always gets a 4xx naming the problem, never a 5xx, a stack trace or an
echo of the input.

The model, its poller and the answers to `POST /predict`, `GET /health` and `GET /ready` live
in components/serving_core.py (no FastAPI); this module adds the FastAPI view over that core:
the documented routes, the OpenAPI page, /metadata and /metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute

from components.prediction_log import PredictionLog
from components.serving_core import (
    INLINE_BODY_BYTES,
    MAX_BODY_BYTES,
    MAX_ROWS,
    ROUTES,
    LoadedModel,
    ModelHolder,
    Served,
    ServingCore,
)
from components.serving_inputs import UnknownCategory
from components.serving_metrics import RequestGuard

__all__ = [
    "INLINE_BODY_BYTES",
    "MAX_BODY_BYTES",
    "MAX_ROWS",
    "LoadedModel",
    "ModelHolder",
    "Served",
    "ServingCore",
    "app_for",
    "create_app",
]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for status, why in {
        400: "Invalid JSON, an empty body or a bad Content-Length",
        413: "Body larger than the limit",
        415: "Content type is not application/json",
        422: "The body does not fit the model's input schema; the message names the field",
        503: "No model loaded yet",
    }.items()
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def create_app(
    loader: Callable[[], LoadedModel | None],
    *,
    pipeline: str,
    poll_seconds: float = 30.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_rows: int = MAX_ROWS,
    unknown_category: UnknownCategory = "ignore",
    prediction_log: PredictionLog | None = None,
) -> FastAPI:
    """Build the service in one process: its core and the FastAPI app around it.

    The arguments are :class:`components.serving_core.ServingCore`'s (the model is loaded at
    startup and polled every `poll_seconds`); `app.state.refresh()` runs one poll on demand.
    """
    core = ServingCore(
        loader,
        pipeline=pipeline,
        poll_seconds=poll_seconds,
        max_body_bytes=max_body_bytes,
        max_rows=max_rows,
        unknown_category=unknown_category,
        prediction_log=prediction_log,
    )
    return app_for(core)


def app_for(core: ServingCore, *, lifespan: bool = True) -> FastAPI:
    """The FastAPI app over a serving core.

    Args:
        core: The model, its metrics and the raw answers.
        lifespan: Whether the app's lifespan starts and stops the core; False when the core
            is started by whoever serves it (the worker's outermost layer).
    """
    holder, metrics, pipeline = core.holder, core.metrics, core.pipeline

    @contextlib.asynccontextmanager
    async def run_core(_: FastAPI) -> AsyncIterator[None]:
        await core.startup()
        try:
            yield
        finally:
            await core.shutdown()

    app = _ServingApp(title=f"deepgate {pipeline}", lifespan=run_core if lifespan else None)
    app.state.core = core
    app.state.models = holder
    app.state.refresh = holder.refresh
    app.state.metrics = metrics
    app.openapi = lambda: _openapi(app, holder)  # type: ignore[method-assign]

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: ERROR_RESPONSES[503]})
    def ready() -> JSONResponse:
        """Readiness: 200 with the version once a model is loaded, else 503."""
        status, payload = core.ready()
        return JSONResponse(payload, status_code=status)

    @app.get("/metadata", responses={503: ERROR_RESPONSES[503]})
    def metadata() -> JSONResponse:
        """What is being served and what input it expects."""
        model = holder.current
        if model is None:
            return _error(503, "no model loaded")
        return JSONResponse(
            {
                "pipeline": pipeline,
                "version": model.version,
                "alias": model.info.get("alias"),
                "data_version": model.info.get("data_version"),
                "trained_at": model.info.get("trained_at"),
                "info": model.info,
                "modality": model.predictor.modality,
                "input_schema": model.predictor.input_schema(),
                "classes": list(model.predictor.classes),
                "unknown_category": core.unknown_category,
            }
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> Response:
        """Prometheus text format: requests by route and status, latency, errors, model version."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def predict(request: Request) -> JSONResponse:
        """Score one or more inputs: {"rows": [{...}]} for tables, {"images": [...]} for images.

        The request and response schemas below are those of the model being served.
        """
        # The route documents /predict; the core's fast handler answers it, the same way (see _ServingApp).
        status, payload = await core.answer(request.scope, request.receive)
        return JSONResponse(payload, status_code=status)

    # FastAPI's route documents /predict (the OpenAPI page); `_ServingApp` sends it to `fast_predict`.
    app.post("/predict", responses=ERROR_RESPONSES)(predict)

    routes = {route.path for route in app.routes if isinstance(route, APIRoute)} | {"/docs", "/openapi.json"}
    if routes != ROUTES:  # the core counts metrics by ROUTES: the two must name the same paths
        raise RuntimeError(f"the app's routes {sorted(routes)} differ from serving_core.ROUTES")
    app.add_middleware(RequestGuard, metrics=metrics, max_body_bytes=core.max_body_bytes, routes=set(ROUTES))
    app.fast_predict = core.fast_predict
    return app


TELEMETRY_CHECK_SECONDS = 1.0  # a provider set up while serving reaches /predict within this


class _ServingApp(FastAPI):
    """FastAPI, except that `POST /predict` goes straight to its raw ASGI handler.

    Starlette's middleware stack, routing and FastAPI's dependency resolution cost more than
    validating and scoring one row. `fast_predict` is the same guard (size limit, content-type,
    metrics) around a handler that answers exactly as the documented route would; every other
    request, and /predict when FastAPI's native telemetry is on, takes the app's normal path.
    """

    fast_predict: Any = None
    _telemetry_answer: tuple[float, bool] = (-1.0, False)  # (monotonic time it holds until, enabled)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/predict"
            and scope["method"] == "POST"
            and self.fast_predict is not None
            and not self.telemetry_enabled()
        ):
            await self.fast_predict(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def telemetry_enabled(self) -> bool:
        """Whether FastAPI's native telemetry is on (then /predict takes the app's normal path)."""
        # Asking OpenTelemetry whether a provider is configured reads os.environ three times
        # (a few percent of a request); the answer is refreshed once a second instead.
        until, enabled = self._telemetry_answer
        now = time.monotonic()
        if now >= until:
            # A private attribute of FastAPI (0.150): were a later release to drop it, there is
            # no native telemetry to honour, and the fast path stays right.
            native = getattr(self, "_native_telemetry", None)
            enabled = native is not None and bool(native.enabled())
            self._telemetry_answer = (now + TELEMETRY_CHECK_SECONDS, enabled)
        return enabled


def _openapi(app: FastAPI, holder: ModelHolder) -> dict[str, Any]:
    """The OpenAPI document, with /predict's schemas taken from the model being served now."""
    served = holder.serving
    version = served.model.version if served is not None else None
    cached = getattr(app.state, "openapi_cache", None)
    if cached is not None and cached[0] == version:
        return cached[1]  # type: ignore[no-any-return]
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
        "title": "Error",
    }
    operation = schema["paths"]["/predict"]["post"]
    body_schema: dict[str, Any] = {"type": "object"}
    if served is not None:
        for model in (served.spec.request, served.spec.response):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        body_schema = {"$ref": f"#/components/schemas/{served.spec.request.__name__}"}
        ok = {"$ref": f"#/components/schemas/{served.spec.response.__name__}"}
        operation["responses"]["200"] = {
            "description": f"Predictions of model version {version}",
            "content": {"application/json": {"schema": ok}},
        }
    operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
    app.state.openapi_cache = (version, schema)
    return schema
