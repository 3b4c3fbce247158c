"""The answering core of the REST service, without FastAPI: the model holder and `POST /predict`.

`deepgate serve`'s workers answer `POST /predict`, `GET /health` and `GET /ready` with this
module alone, at the outermost ASGI layer (components/serving_worker.py), and build the
FastAPI app (components/serving.py: the OpenAPI page, /metadata, /metrics, every other path)
around the same core in the background once they listen. FastAPI's import is half of a
worker's start-up (about 0.3 s of CPU here), and a worker is ready without it. In one process
(tests, an embedding ASGI server), `create_app` builds both at once.

What is answered here is answered exactly as the FastAPI routes answer it (same bodies,
statuses and headers): tests/components/test_serving.py compares /predict on every case,
tests/components/test_serving_worker.py the probes and /predict byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
# The service's paths (metrics count each under its own label; others count as "other").
# components/serving.py's FastAPI app has exactly these (app_for refuses to build otherwise).
ROUTES = frozenset({"/health", "/ready", "/metadata", "/metrics", "/predict", "/docs", "/openapi.json"})
# JSONResponse's rendering (json.dumps with these options), with the encoder built once.
JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
_JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_ERROR_500_HEADERS = [(b"content-length", b"21"), (b"content-type", b"text/plain; charset=utf-8")]


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


def parse_json(body: bytes) -> Any:
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


def predict(served: Served, body: Any) -> tuple[dict[str, Any], list[Any] | np.ndarray, np.ndarray]:
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


async def read_raw_body(scope: Any, receive: Any) -> bytes:
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
            from starlette.requests import ClientDisconnect  # rare: not imported on the start-up path

            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def json_messages(status: int, payload: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages starlette's JSONResponse(payload, status) sends, without building one."""
    body = JSON_ENCODER.encode(payload).encode()
    headers = [(b"content-length", str(len(body)).encode()), _JSON_CONTENT_TYPE]
    start = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


async def send_json(send: Any, status: int, payload: Any) -> None:
    """Send what JSONResponse(payload, status) would."""
    for message in json_messages(status, payload):
        await send(message)


class ServingCore:
    """The model being served, its metrics, its poller, and the answers that need no FastAPI.

    The model is loaded by :meth:`startup`; then a background task calls `loader` every
    `poll_seconds` and swaps in a new version when there is one. Loader errors are logged and
    the current model keeps serving.

    Args:
        loader: Returns the model to serve, or None when there is none yet.
        pipeline: The pipeline name, reported by /metadata and the metrics.
        poll_seconds: Seconds between polls; 0 or less disables polling.
        max_body_bytes: Larger request bodies get 413, before they are read.
        max_rows: Larger batches get 422.
        unknown_category: A categorical value not seen in training: `ignore` scores it as no
            known category (as training's one-hot encoding does), `error` refuses it with 422.
        prediction_log: Where a sample of inputs and answers goes; closed (flushed) at shutdown.
    """

    def __init__(
        self,
        loader: Callable[[], LoadedModel | None],
        *,
        pipeline: str,
        poll_seconds: float = 30.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_rows: int = MAX_ROWS,
        unknown_category: UnknownCategory = "ignore",
        prediction_log: PredictionLog | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.poll_seconds = poll_seconds
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows
        self.unknown_category = unknown_category
        self.prediction_log = prediction_log
        self.metrics = ServiceMetrics(pipeline)
        self.holder = ModelHolder(
            loader, self._prepare, on_swap=lambda m: self.metrics.serving(m.version, m.info.get("alias"))
        )
        if prediction_log is not None:
            prediction_log.on_drop = self.metrics.log_dropped.inc
        self._predictions_by_version: dict[str, Any] = {}
        self._poller: asyncio.Task[None] | None = None
        self._started = False
        # The guarded raw handlers: size limit, content type and metrics as for every route.
        self.fast_predict = self.guard(self._predict_asgi)
        self.fast_probe = self.guard(self._probe_asgi)

    def guard(self, app: Any) -> RequestGuard:
        """`app` behind the service's request guard (body limit, metrics)."""
        return RequestGuard(app, metrics=self.metrics, max_body_bytes=self.max_body_bytes, routes=set(ROUTES))

    def _prepare(self, model: LoadedModel) -> Served:
        # Built before the swap: a model whose schema cannot be built never goes live.
        return Served(model, input_spec(model.predictor, self.max_rows, self.unknown_category))

    # ------------------------------------------------------------------ life cycle
    async def refresh_logged(self) -> None:
        """One poll of the loader, off the event loop (it may read files or a registry); errors logged."""
        try:
            await asyncio.to_thread(self.holder.refresh)
        except Exception:
            log.exception("loading the model failed; keeping the current one")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            await self.refresh_logged()

    async def startup(self) -> None:
        """Load the model and start the poller (once, however many apps share this core)."""
        if self._started:
            return
        self._started = True
        await self.refresh_logged()
        if self.poll_seconds > 0:
            self._poller = asyncio.create_task(self._poll_forever())

    async def shutdown(self) -> None:
        """Stop the poller and flush the prediction log."""
        if not self._started:
            return
        self._started = False
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self.prediction_log is not None:
            await asyncio.to_thread(self.prediction_log.close)

    # ------------------------------------------------------------------ answers
    def ready(self) -> tuple[int, dict[str, Any]]:
        """GET /ready: 200 with the version once a model is loaded, else 503."""
        model = self.holder.current
        if model is None:
            return 503, {"status": "not ready", "detail": "no model loaded"}
        return 200, {"status": "ready", "version": model.version}

    async def answer(self, scope: Any, receive: Any) -> tuple[int, dict[str, Any]]:
        """POST /predict: the status and the JSON answer."""
        served = self.holder.serving  # read once: the whole request uses this version
        if served is None:
            return 503, {"detail": "no model loaded"}
        try:
            raw = await read_raw_body(scope, receive)
            body = parse_json(raw)
            if len(raw) <= INLINE_BODY_BYTES:
                result, batch, probabilities = predict(served, body)
            else:  # CPU-bound for long: off the event loop, so /health stays responsive
                from starlette.concurrency import run_in_threadpool  # anyio: only big batches need it

                result, batch, probabilities = await run_in_threadpool(predict, served, body)
        except BadInput as error:
            return error.status, {"detail": error.message}
        except InputError as error:
            return 422, {"detail": str(error)}
        counter = self._predictions_by_version.get(served.model.version)
        if counter is None:  # labels() costs more than inc(): one lookup per version
            counter = self.metrics.predictions.labels(served.model.version)
            self._predictions_by_version[served.model.version] = counter
        counter.inc(len(batch))
        if self.prediction_log is not None:
            self.prediction_log.record(served.model.version, batch, result["predictions"], probabilities)
        return 200, result

    async def _predict_asgi(self, scope: Any, receive: Any, send: Any) -> None:
        # What JSONResponse(payload, status) would send; and what starlette's
        # ServerErrorMiddleware does with an unexpected error (500, then re-raise).
        started = False
        try:
            start, body = json_messages(*await self.answer(scope, receive))
            started = True
            await send(start)
            await send(body)
        except _BodyTooLarge:
            raise  # the guard's own signal: it answers 413
        except Exception:
            if not started:
                await send({"type": "http.response.start", "status": 500, "headers": _ERROR_500_HEADERS})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
            raise

    async def _probe_asgi(self, scope: Any, receive: Any, send: Any) -> None:
        # GET /health and GET /ready, as the FastAPI routes answer them.
        if scope["path"] == "/health":
            await send_json(send, 200, {"status": "ok"})
        else:
            await send_json(send, *self.ready())
