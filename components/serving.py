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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from components.features import InputError
from components.predictor import Predictor

log = logging.getLogger(__name__)

MAX_ROWS = 10_000


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


class ModelHolder:
    """Holds the current :class:`LoadedModel` and swaps it when the loader returns a new version.

    The swap is a single attribute assignment: requests read `current` once and keep that
    object, so none ever mixes two versions.
    """

    def __init__(self, loader: Callable[[], LoadedModel | None]) -> None:
        self.current: LoadedModel | None = None
        self._loader = loader
        self._lock = threading.Lock()  # the poller and a manual refresh never load at once

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
            self.current = loaded
            log.info("serving model version %s", loaded.version)
            return True


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; strict JSON (and the model) does not.
    raise _BadRequest(422, f"{name} is not allowed: send finite numbers")


async def _read_json(request: Request, max_body_bytes: int) -> Any:
    """The parsed body, after the content-type and size checks."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise _BadRequest(415, "content type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _BadRequest(400, "invalid Content-Length header")
        if int(declared) > max_body_bytes:
            raise _BadRequest(413, f"body larger than {max_body_bytes} bytes")
    # Count what actually arrives too: a chunked body has no Content-Length to check.
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise _BadRequest(413, f"body larger than {max_body_bytes} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks), parse_constant=_reject_constant)
    except json.JSONDecodeError as error:  # its position, not its text: never echo the body
        raise _BadRequest(
            400, f"body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except ValueError:  # bad UTF-8, or an integer too long to parse
        raise _BadRequest(400, "body is not valid JSON") from None
    except RecursionError:  # a body of thousands of nested brackets
        raise _BadRequest(400, "body is nested too deeply") from None


def _batch(body: Any, key: str, max_rows: int) -> list[Any]:
    """The list under `key`, checked for type and size."""
    if not isinstance(body, dict) or key not in body:
        raise _BadRequest(422, f"body must be a JSON object with a {key!r} list")
    if len(body) != 1:
        raise _BadRequest(422, f"body must hold only the {key!r} field")
    batch = body[key]
    if not isinstance(batch, list):
        raise _BadRequest(422, f"{key!r} must be a list")
    if not batch:
        raise _BadRequest(422, f"{key!r} is empty: send at least one")
    if len(batch) > max_rows:
        raise _BadRequest(422, f"too many {key}: at most {max_rows} per request")
    return batch


def _predict(model: LoadedModel, batch: list[Any]) -> dict[str, Any]:
    predictor = model.predictor
    if predictor.modality == "tabular":
        probabilities = predictor.predict_records(batch, strict=True)
    else:
        probabilities = predictor.predict_proba(batch, strict=True)
    return {
        "version": model.version,
        "predictions": predictor.labels(probabilities),
        "probabilities": probabilities.tolist(),
        "classes": list(predictor.classes),
    }


def create_app(
    loader: Callable[[], LoadedModel | None],
    *,
    pipeline: str,
    poll_seconds: float = 30.0,
    max_body_bytes: int = 1_000_000,
    max_rows: int = MAX_ROWS,
) -> FastAPI:
    """Build the service.

    The model is loaded at startup; then a background task calls `loader` every
    `poll_seconds` and swaps in a new version when there is one. Loader errors are logged and
    the current model keeps serving. `app.state.refresh()` runs one poll on demand.

    Args:
        loader: Returns the model to serve, or None when there is none yet.
        pipeline: The pipeline name, reported by /metadata.
        poll_seconds: Seconds between polls; 0 or less disables polling.
        max_body_bytes: Larger request bodies get 413.
        max_rows: Larger batches get 422.
    """
    holder = ModelHolder(loader)

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

    app = FastAPI(title=f"deepgate {pipeline}", lifespan=lifespan)
    app.state.models = holder
    app.state.refresh = holder.refresh

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """Readiness: 200 with the version once a model is loaded, else 503."""
        model = holder.current
        if model is None:
            return JSONResponse({"status": "not ready", "detail": "no model loaded"}, status_code=503)
        return JSONResponse({"status": "ready", "version": model.version})

    @app.get("/metadata")
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
                "info": model.info,
                "modality": model.predictor.modality,
                "input_schema": model.predictor.input_schema(),
                "classes": list(model.predictor.classes),
            }
        )

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        """Predict a batch: {"rows": [{...}]} for tables, {"images": [[[...]]]} for images."""
        model = holder.current  # read once: the whole request uses this version
        if model is None:
            return _error(503, "no model loaded")
        key = "rows" if model.predictor.modality == "tabular" else "images"
        try:
            batch = _batch(await _read_json(request, max_body_bytes), key, max_rows)
            # The forward pass is CPU-bound: run it off the event loop so /health stays responsive.
            return JSONResponse(await run_in_threadpool(_predict, model, batch))
        except _BadRequest as error:
            return _error(error.status, error.message)
        except InputError as error:
            return _error(422, str(error))

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn: one worker (the model lives in this process), no access log."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, workers=1, access_log=False, log_level="warning")
