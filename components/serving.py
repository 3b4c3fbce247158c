"""The REST service: a FastAPI app around whichever model version the loader returns.

The app knows nothing of MLflow: it is given a `loader` that returns the model to serve (the
current champion, say) and polls it, so a promotion reaches the running service without a
restart. Bad input always gets a 4xx naming the problem, never a 5xx, a stack trace or an
echo of the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from components.features import InputError
from components.prediction_log import PredictionLog
from components.predictor import Predictor
from components.serving_inputs import BadInput, InputSpec, UnknownCategory, input_spec, parse_batch
from components.serving_metrics import RequestGuard, ServiceMetrics, _BodyTooLarge

log = logging.getLogger(__name__)

MAX_ROWS = 10_000
# 1 MB holds about 5,000 typical rows or 300 28x28 images as JSON: plenty for online scoring
# (bigger jobs belong to batch scoring), and small enough to parse in milliseconds.
MAX_BODY_BYTES = 1_000_000
# Bodies up to this size (a few dozen rows) are scored on the event loop: that takes well
# under a millisecond, less than handing the work to a thread and back costs. Larger ones go
# to a thread, so that a big batch never holds up /health or other requests.
INLINE_BODY_BYTES = 16_384


@dataclass(frozen=True)
class LoadedModel:
    """One servable model version; immutable, so a request that holds it sees one consistent model.

    Attributes:
        version: Registry version (any string that changes when the model does).
        predictor: The loaded model package.
        info: Free description shown by /metadata: pipeline, alias, data_version, ...
    """

    version: str
    predictor: Predictor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Served:
    """A model with its request schema: swapped as one object, so the two always match."""

    model: LoadedModel
    spec: InputSpec


class ModelHolder:
    """Holds the model being served and swaps it when the loader returns a new version.

    The swap is a single attribute assignment: requests read `serving` once and keep that
    object, so none ever mixes two versions (or a version with another's schema).

    Args:
        loader: Returns the model to serve, or None.
        prepare: Builds what is served with the model (its request schema), before the swap.
        on_swap: Called with each model swapped in (metrics).
    """

    def __init__(
        self,
        loader: Callable[[], LoadedModel | None],
        prepare: Callable[[LoadedModel], Served],
        on_swap: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.serving: Served | None = None
        self._loader = loader
        self._prepare = prepare
        self._on_swap = on_swap
        self._lock = threading.Lock()  # the poller and a manual refresh never load at once

    @property
    def current(self) -> LoadedModel | None:
        """The model being served, or None before the first load."""
        serving = self.serving
        return None if serving is None else serving.model

    def refresh(self) -> bool:
        """Ask the loader for the model to serve; swap it in if its version changed.

        Errors propagate (the poller logs them); the old model stays in place either way.

        Returns:
            Whether a new version was swapped in.
        """
        with self._lock:
            loaded = self._loader()
            current = self.current
            if loaded is None:
                if current is not None:
                    log.warning("loader returned no model; keeping version %s", current.version)
                return False
            if current is not None and loaded.version == current.version:
                return False
            self.serving = self._prepare(loaded)
            if self._on_swap is not None:
                self._on_swap(loaded)
            log.info("serving model version %s", loaded.version)
            return True


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _parse_json(body: bytes) -> Any:
    """The parsed body."""
    if not body:
        raise BadInput(400, "body is empty: send a JSON object")
    try:
        # Python's json reads NaN and Infinity (not strict JSON) as floats: the schema's finite
        # check then refuses them with a message naming the field.
        return json.loads(body)
    except json.JSONDecodeError as error:  # its position, not its text: never echo the body
        raise BadInput(
            400, f"body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except ValueError:  # bad UTF-8, or an integer too long to parse
        raise BadInput(400, "body is not valid JSON") from None
    except RecursionError:  # a body of thousands of nested brackets
        raise BadInput(400, "body is nested too deeply") from None


def _predict(served: Served, body: Any) -> tuple[dict[str, Any], list[Any] | np.ndarray, np.ndarray]:
    """The answer, and the validated inputs and probabilities (for the prediction log)."""
    model, predictor = served.model, served.model.predictor
    batch = parse_batch(served.spec, predictor, body)
    if isinstance(batch, np.ndarray):
        probabilities = predictor.predict_proba(batch, strict=True)
    else:
        probabilities = predictor.predict_records(batch, strict=True)
    if not np.isfinite(probabilities).all():  # a last guard: an answer must be valid JSON numbers
        raise BadInput(422, "inputs are outside the range the model can score")
    labels = predictor.labels(probabilities)
    answer = {
        "version": model.version,
        "predictions": labels,
        "probabilities": probabilities.tolist(),
        "classes": list(predictor.classes),
    }
    return answer, batch, probabilities


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
    """Build the service.

    The model is loaded at startup; then a background task calls `loader` every
    `poll_seconds` and swaps in a new version when there is one. Loader errors are logged and
    the current model keeps serving. `app.state.refresh()` runs one poll on demand.

    Args:
        loader: Returns the model to serve, or None when there is none yet.
        pipeline: The pipeline name, reported by /metadata.
        poll_seconds: Seconds between polls; 0 or less disables polling.
        max_body_bytes: Larger request bodies get 413, before they are read.
        max_rows: Larger batches get 422.
        unknown_category: A categorical value not seen in training: `ignore` scores it as no
            known category (as training's one-hot encoding does), `error` refuses it with 422.
        prediction_log: Where a sample of inputs and answers goes; closed (flushed) at shutdown.
    """
    metrics = ServiceMetrics(pipeline)

    def prepare(model: LoadedModel) -> Served:
        # Built before the swap: a model whose schema cannot be built never goes live.
        return Served(model, input_spec(model.predictor, max_rows, unknown_category))

    predictions_by_version: dict[str, Any] = {}
    holder = ModelHolder(loader, prepare, on_swap=lambda m: metrics.serving(m.version, m.info.get("alias")))
    if prediction_log is not None:
        prediction_log.on_drop = metrics.log_dropped.inc

    async def poll_forever() -> None:
        while True:
            await asyncio.sleep(poll_seconds)
            await _refresh_logged()

    async def _refresh_logged() -> None:
        try:
            # The loader may download from a registry: keep it off the event loop.
            await asyncio.to_thread(holder.refresh)
        except Exception:
            log.exception("loading the model failed; keeping the current one")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _refresh_logged()
        poller = asyncio.create_task(poll_forever()) if poll_seconds > 0 else None
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            if prediction_log is not None:
                await asyncio.to_thread(prediction_log.close)

    app = _ServingApp(title=f"deepgate {pipeline}", lifespan=lifespan)
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
        model = holder.current
        if model is None:
            return JSONResponse({"status": "not ready", "detail": "no model loaded"}, status_code=503)
        return JSONResponse({"status": "ready", "version": model.version})

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
                "unknown_category": unknown_category,
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
        # The route documents /predict; `predict_asgi` answers it, the same way (see _ServingApp).
        status, payload = await answer(request.scope, request.receive)
        return JSONResponse(payload, status_code=status)

    async def answer(scope: Any, receive: Any) -> tuple[int, dict[str, Any]]:
        served = holder.serving  # read once: the whole request uses this version
        if served is None:
            return 503, {"detail": "no model loaded"}
        try:
            raw = await _read_raw_body(scope, receive)
            body = _parse_json(raw)
            if len(raw) <= INLINE_BODY_BYTES:
                result, batch, probabilities = _predict(served, body)
            else:  # CPU-bound for long: off the event loop, so /health stays responsive
                result, batch, probabilities = await run_in_threadpool(_predict, served, body)
        except BadInput as error:
            return error.status, {"detail": error.message}
        except InputError as error:
            return 422, {"detail": str(error)}
        counter = predictions_by_version.get(served.model.version)
        if counter is None:  # labels() costs more than inc(): one lookup per version
            counter = predictions_by_version[served.model.version] = metrics.predictions.labels(served.model.version)
        counter.inc(len(batch))
        if prediction_log is not None:
            prediction_log.record(served.model.version, batch, result["predictions"], probabilities)
        return 200, result

    async def predict_asgi(scope: Any, receive: Any, send: Any) -> None:
        # What JSONResponse(payload, status) would send, without building one; and what
        # starlette's ServerErrorMiddleware does with an unexpected error (500, then re-raise).
        started = False
        try:
            status, payload = await answer(scope, receive)
            body = _JSON_ENCODER.encode(payload).encode()
            headers = [(b"content-length", str(len(body)).encode()), _JSON_CONTENT_TYPE]
            started = True
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except _BodyTooLarge:
            raise  # the guard's own signal: it answers 413
        except Exception:
            if not started:
                await send({"type": "http.response.start", "status": 500, "headers": _ERROR_500_HEADERS})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
            raise

    # FastAPI's route documents /predict (the OpenAPI page); `_ServingApp` sends it to `fast_predict`.
    app.post("/predict", responses=ERROR_RESPONSES)(predict)

    routes = {route.path for route in app.routes if isinstance(route, APIRoute)} | {"/docs", "/openapi.json"}
    app.add_middleware(RequestGuard, metrics=metrics, max_body_bytes=max_body_bytes, routes=routes)  # outermost
    app.fast_predict = RequestGuard(predict_asgi, metrics=metrics, max_body_bytes=max_body_bytes, routes=routes)
    return app


TELEMETRY_CHECK_SECONDS = 1.0  # a provider set up while serving reaches /predict within this
# JSONResponse's rendering (json.dumps with these options), with the encoder built once.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_ERROR_500_HEADERS = [(b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")]


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
            and not self._telemetry_enabled()
        ):
            await self.fast_predict(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _telemetry_enabled(self) -> bool:
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


async def _read_raw_body(scope: Any, receive: Any) -> bytes:
    """The raw body, after the content-type check (the size is the guard's job).

    What `Request.headers.get("content-type")` and `await Request.body()` do, without the
    Request object: the first content-type header, and the body's chunks up to the last.
    """
    content_type = ""
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
            break
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise BadInput(415, "content type must be application/json")
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
