"""Prometheus metrics of the REST service, and the raw ASGI guard that measures and limits requests.

The guard sits outside the app's routing, so every request is counted (unknown paths and
refused bodies too) and an oversized body is refused before it is read: a Content-Length
over the limit gets 413 at once, and a body streamed without one is counted as it arrives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Latency buckets (seconds) from a health check (~1 ms) to a large batch on CPU (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OTHER_ROUTE = "other"  # every unknown path shares one label: a scanner cannot blow up cardinality
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}  # others count as "other" too


class ServiceMetrics:
    """The service's metrics, in a registry of their own (two apps in one process never clash).

    Args:
        pipeline: The pipeline served, a label of the model gauge.
    """

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.registry = CollectorRegistry()
        labels = ["route", "method", "status"]
        self.requests = Counter(
            "deepgate_http_requests",
            "HTTP requests answered, by route, method and status code.",
            labels,
            registry=self.registry,
        )
        self.errors = Counter(
            "deepgate_http_errors",
            "Answers with status >= 400, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "deepgate_http_request_duration_seconds",
            "Time from request to the end of the answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "deepgate_predictions",
            "Inputs (rows or images) scored, by model version.",
            ["version"],
            registry=self.registry,
        )
        self.model = Gauge(
            "deepgate_model_info",
            "1 for the model version being served.",
            ["pipeline", "version", "alias"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "deepgate_model_swaps", "Model versions swapped in after start-up.", registry=self.registry
        )
        self.log_dropped = Counter(
            "deepgate_prediction_log_dropped",
            "Sampled predictions not logged (queue full or write failed).",
            registry=self.registry,
        )
        self._served: tuple[str, str] | None = None
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:  # labels() costs more than the update: look each series up once
            error = self.errors.labels(route, str(status)) if status >= 400 else None
            series = (self.requests.labels(route, method, str(status)), self.latency.labels(route), error)
            self._series[key] = series  # bounded: routes and methods are fixed sets, statuses few
        requests, latency, errors = series
        requests.inc()
        latency.observe(seconds)
        if errors is not None:
            errors.inc()

    def serving(self, version: str, alias: str | None) -> None:
        """Point the model gauge at `version` (the old version's series goes away)."""
        if self._served is not None:
            self.model.remove(self.pipeline, *self._served)
            self.swaps.inc()
        self._served = (version, alias or "")
        self.model.labels(self.pipeline, version, alias or "").set(1)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _BodyTooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit; the guard answers 413."""


class RequestGuard:
    """Raw ASGI middleware: body size limit (413, before reading), metrics for every request.

    Args:
        app: The wrapped application.
        metrics: Where requests are counted.
        max_body_bytes: Larger bodies get 413.
        routes: Paths counted under their own label; others count as `other`.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int, routes: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answer = {"status": 500, "started": False}  # no answer at all would be the server's fault

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.update(status=message["status"], started=True)
            await send(message)

        try:
            await self._guarded(scope, receive, send_counted, answer)
        finally:
            route = scope["path"] if scope["path"] in self.routes else OTHER_ROUTE
            method = scope["method"] if scope["method"] in METHODS else OTHER_ROUTE
            self.metrics.observe(route, method, int(answer["status"]), time.perf_counter() - start)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, answer: dict[str, Any]) -> None:
        limit = self.max_body_bytes
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if declared:
            if len(declared) > 1 or not declared[0].isdigit():
                await _reply(send, 400, "invalid Content-Length header")
                return
            if int(declared[0]) > limit:
                await _reply(send, 413, f"body larger than {limit} bytes")
                return
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, receive_counted, send)
        except _BodyTooLarge:
            if not answer["started"]:
                await _reply(send, 413, f"body larger than {limit} bytes")


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    # No "Connection: close": closing on a client still sending resets the connection, and the
    # client never reads the 413. The server discards the rest of the body as it arrives.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
