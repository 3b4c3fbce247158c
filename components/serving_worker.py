"""The lean serving worker: answers REST requests for a model package folder, and nothing else.

`deepgate serve` runs this module in one or more child processes (see
components/serving_supervisor.py). A worker imports only what answering needs: numpy, ONNX
Runtime, FastAPI/starlette, pydantic and prometheus_client; never torch, MLflow, pandas or
scikit-learn (a test checks this). The preprocessing is the package's own code
(components/features.py, which loads pandas only for DataFrames), so the worker's answers are
those of training's code path, bit for bit. A package without `model.onnx` still serves: it
loads torch then, and only then.

The worker never talks to the registry. It follows a small JSON *state file* that the
supervisor writes atomically (write, then rename; components/serving_state.py). Each poll is
one `stat`; when the file changes, the named package is loaded beside the one being served and
swapped in as one object (components/serving.py's ModelHolder), so no request fails or mixes
versions across a swap. Until the file exists, /ready answers 503.

Entry point (started by the supervisor, which binds the socket and passes it on, or by the
pre-promotion serving check, components/serving_check.py, on one package folder)::

    python -m components.serving_worker (--state FILE | --package DIR) (--fd N | --port N) [options]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.prediction_log import PredictionLog
from components.predictor import Predictor
from components.serving_core import MAX_BODY_BYTES, MAX_ROWS, LoadedModel, ServingCore
from components.serving_state import listening_socket, read_state

log = logging.getLogger(__name__)

STATE_POLL_SECONDS = 0.2  # one stat() per poll: a swap or the first model shows up within this
# One ONNX Runtime thread per worker: a request is one row or a small batch (microseconds of
# math), where a thread pool costs more than it brings; more cores mean more --workers.
ONNX_THREADS = 1


def state_loader(path: Path, backend: str = "auto") -> Callable[[], LoadedModel | None]:
    """A loader for :class:`components.serving_core.ServingCore` that follows a state file.

    The package is loaded only when the file names a new version; the ONNX-served predictor
    keeps its torch network unbuilt (`lazy_net`), so torch is never imported for it.
    """
    seen: dict[str, Any] = {"stamp": None, "model": None}
    lock = threading.Lock()

    def load() -> LoadedModel | None:
        with lock:
            try:
                stat = path.stat()
            except FileNotFoundError:
                return seen["model"]  # type: ignore[no-any-return]
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == seen["stamp"]:
                return seen["model"]  # type: ignore[no-any-return]
            # Marked as seen before loading: a package that fails to load is not retried every
            # poll (a version's package never changes), only when the file names another.
            seen["stamp"] = stamp
            state = read_state(path)
            current: LoadedModel | None = seen["model"]
            if state is not None and (current is None or current.version != str(state["version"])):
                predictor = Predictor.load(
                    state["package"],
                    backend=backend,  # type: ignore[arg-type]
                    lazy_net=True,
                    onnx_threads=ONNX_THREADS,
                )
                seen["model"] = LoadedModel(str(state["version"]), predictor, dict(state.get("info") or {}))
            return seen["model"]  # type: ignore[no-any-return]

    return load


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The worker's options (the supervisor passes them through from `deepgate serve`)."""
    parser = argparse.ArgumentParser(description="Serve the model package a state file names, over REST.")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--state", type=Path, help="follow the JSON state file the supervisor writes")
    model.add_argument("--package", type=Path, help="serve this package folder only (the serving check)")
    parser.add_argument("--version", default="package", help="the version /ready reports, with --package")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="an inherited, bound and listening TCP socket")
    where.add_argument("--port", type=int, help="bind this port on --host instead")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pipeline", default="package")
    parser.add_argument("--backend", choices=["onnx", "torch", "auto"], default="auto")
    parser.add_argument("--poll", type=float, default=STATE_POLL_SECONDS, help="seconds between state file checks")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS)
    parser.add_argument("--unknown-category", choices=["ignore", "error"], default="ignore")
    parser.add_argument("--log-predictions", type=float, default=0.0, help="fraction of inputs logged (0: off)")
    parser.add_argument("--prediction-log", type=Path, help="the sqlite file of logged predictions")
    parser.add_argument("--notify-fd", type=int, help="write one line here once the server listens")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's graceful shutdown flushes the prediction log)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # fileno= reads family, type and proto from the socket itself, so TCP_NODELAY applies (see
    # listening_socket); uvicorn's own --fd rebuilds the socket as AF_UNIX, which loses it.
    sock = socket.socket(fileno=args.fd) if args.fd is not None else listening_socket(args.host, args.port)
    prediction_log = None
    if args.log_predictions > 0:
        if args.prediction_log is None:
            raise SystemExit("--log-predictions needs --prediction-log")
        prediction_log = PredictionLog(args.prediction_log, args.log_predictions)
    if args.package is not None:
        # Loaded before serving: a package that does not load ends the process at once, with
        # the reason on stderr, instead of a server that is never ready.
        predictor = Predictor.load(args.package, backend=args.backend, lazy_net=True, onnx_threads=ONNX_THREADS)
        fixed = LoadedModel(args.version, predictor, {"pipeline": args.pipeline})
        loader: Callable[[], LoadedModel | None] = lambda: fixed  # noqa: E731
    else:
        loader = state_loader(args.state, args.backend)
    core = ServingCore(
        loader,
        pipeline=args.pipeline,
        poll_seconds=args.poll if args.state is not None else 0,
        max_body_bytes=args.max_body_bytes,
        max_rows=args.max_rows,
        unknown_category=args.unknown_category,
        prediction_log=prediction_log,
    )
    run: Callable[[Any], Any] = asyncio.run
    with contextlib.suppress(ImportError):  # uvloop when installed: uvicorn.run would pick it too
        from uvloop import run
    run(_serve(core, sock, args.notify_fd))


async def _serve(core: ServingCore, sock: socket.socket, notify_fd: int | None) -> None:
    import uvicorn

    config = uvicorn.Config(worker_app(core), access_log=False, log_level="warning", lifespan="on", proxy_headers=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    # Everything imported and built so far lives as long as the process: out of the cyclic
    # collector's sight, a full collection no longer walks it (pauses of tens of ms at p99).
    gc.freeze()
    if notify_fd is not None and server.started:
        with os.fdopen(notify_fd, "w") as notify:  # the supervisor waits on this pipe
            notify.write("listening\n")
    await task
    if not server.started:  # uvicorn logs why; exit non-zero so the supervisor sees the failure
        sys.exit(3)


def worker_app(core: ServingCore) -> Any:
    """The ASGI app given to uvicorn: the core answers first, the FastAPI app everything else.

    `POST /predict`, `GET /health` and `GET /ready` are answered by the core alone (the same
    bodies, statuses and headers as the FastAPI routes). The FastAPI app over the same core
    (components/serving.py: the OpenAPI page, /metadata, /metrics, every other path and
    method) is built in a background thread once the worker has started, so that a worker is
    ready without importing FastAPI (half its start-up); a request for it that comes sooner
    waits for it, once. When FastAPI's native telemetry is on, every request goes through the
    app.

    uvicorn's own proxy-headers layer is turned off and applied here to what reaches the
    FastAPI app (same trusted hosts), so those requests see X-Forwarded-* exactly as before;
    the core's answers read neither the client address nor the scheme.
    """
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")  # uvicorn.Config's default
    full: dict[str, Any] = {}  # "app" and "proxied" once built
    building: list[asyncio.Future[None]] = []

    def build() -> None:
        from components.serving import app_for

        app: Any = app_for(core, lifespan=False)
        full["proxied"] = ProxyHeadersMiddleware(app, trusted_hosts=trusted)
        full["app"] = app
        gc.freeze()  # as for the start-up's objects: out of the cyclic collector's sight

    def start_building() -> asyncio.Future[None]:
        if not building:
            building.append(asyncio.ensure_future(asyncio.to_thread(build)))
        return building[0]

    async def proxied() -> Any:
        if "proxied" not in full:
            await asyncio.shield(start_building())
        return full["proxied"]

    async def lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await core.startup()
                await send({"type": "lifespan.startup.complete"})
                start_building()
            elif message["type"] == "lifespan.shutdown":
                if building:  # never leave the thread importing while the loop closes
                    with contextlib.suppress(Exception):
                        await building[0]
                await core.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def outermost(scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await lifespan(receive, send)
            return
        if kind == "http" and not ("app" in full and full["app"].telemetry_enabled()):
            path, method = scope["path"], scope["method"]
            if method == "POST" and path == "/predict":
                await core.fast_predict(scope, receive, send)
                return
            if method == "GET" and path in ("/health", "/ready"):
                await core.fast_probe(scope, receive, send)
                return
        await (await proxied())(scope, receive, send)

    return outermost


if __name__ == "__main__":
    main()
