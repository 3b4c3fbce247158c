"""Serving validation in a separate process (like TFX's InfraValidator).

Before `champion` moves, the candidate's downloaded package is served by a fresh Python
process (the lean serving worker that `deepgate serve` runs, components/serving_worker.py:
ONNX Runtime with no torch, MLflow or pandas) on a free loopback port. The
check waits for /ready, warms the server up with one request, sends test rows in batches,
compares the answers with the offline torch probabilities and times every request. The
process is always stopped, whatever happens.

A separate process catches what an in-process check cannot: a package that loads only
because the training process already imported or cached something, a missing dependency of
the backend, a server that does not start.

The server side::

    python -m components.serving_worker --package DIR --port N [--version V] [--backend auto]
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.config import ServingGate
from components.gates import Check, GateReport

GATE = "serving"
_ROOT = Path(__file__).resolve().parent.parent  # the project root, so `-m components...` imports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(package: Path, port: int, version: str, pipeline: str, backend: str) -> list[str]:
    """The command that serves `package` on `port`: the lean worker that `deepgate serve` runs."""
    return [
        sys.executable,
        "-m",
        "components.serving_worker",
        "--package",
        str(package),
        "--port",
        str(port),
        "--version",
        version,
        "--pipeline",
        pipeline,
        "--backend",
        backend,
    ]


def check_serving_process(
    package: Path,
    body_key: str,
    inputs: Sequence[Any],
    expected: np.ndarray,
    version: str,
    pipeline: str,
    gate: ServingGate,
    *,
    command: Sequence[str] | None = None,
    port: int | None = None,
) -> GateReport:
    """Serve `package` in a new process, query it with `inputs`, and judge the answers and speed.

    Args:
        package: The model package folder (as downloaded from the registry).
        body_key: `rows` for tabular models, `images` for image models.
        inputs: JSON-able raw inputs (row dicts or nested image lists), one per row of `expected`.
        expected: The offline probabilities for `inputs` (n, n_classes).
        version: The registry version the server must report.
        pipeline: Pipeline name, for the server's /metadata.
        gate: Tolerance, latency budget, start-up budget, batch size and request count.
        command: The server command, for tests (default: :func:`server_command`).
        port: The port `command` listens on (default: a free one).

    Returns:
        The `serving` gate; a failed check names the reason: the server did not start, answered
        wrongly (with the largest difference) or too slowly (with the measured p95).
    """
    import httpx

    port = port if port is not None else free_port()
    argv = list(command) if command is not None else server_command(package, port, version, pipeline, gate.backend)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as log, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
        started = time.perf_counter()
        # Output to a file, not a pipe: a chatty server can never block on a full pipe.
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            checks = [_wait_ready(client, process, gate.startup_seconds, version, log)]
            startup = time.perf_counter() - started
            if checks[0].passed:
                try:
                    checks += _query(client, body_key, list(inputs), expected, gate)
                except httpx.HTTPError as error:  # the server died or hung mid-way
                    detail = f"the server stopped answering: {type(error).__name__} {error}; {_tail(log)}"
                    checks.append(Check("predicts", False, detail))
        finally:
            _stop(process)
    report = GateReport(GATE, checks)
    report.figures["startup_seconds"] = startup
    for check in checks:
        if check.value is not None and check.name in ("parity", "latency_p95_ms"):
            report.figures[check.name] = check.value
    return report


def _wait_ready(client: Any, process: subprocess.Popen[bytes], budget: float, version: str, log: Any) -> Check:
    """Poll /ready until it answers 200 with `version`, the process exits, or the budget is spent."""
    import httpx

    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            return Check("starts", False, f"the server exited with code {code} before it was ready: {_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            response = client.get("/ready", timeout=2.0)
            if response.status_code == 200:
                served = response.json().get("version")
                if served != version:
                    return Check("starts", False, f"the server is ready but serves version {served!r}, not {version!r}")
                return Check("starts", True, f"the server answered /ready within {budget:g}s")
        time.sleep(0.1)
    return Check("starts", False, f"the server did not answer /ready within {budget:g}s: {_tail(log)}", budget)


def _query(client: Any, key: str, inputs: list[Any], expected: np.ndarray, gate: ServingGate) -> list[Check]:
    """Warm up, send every batch (then more, up to `gate.requests`), compare and time."""
    batches = [(i, inputs[i : i + gate.batch_size]) for i in range(0, len(inputs), gate.batch_size)]
    got = np.full(expected.shape, np.nan, dtype=np.float64)
    client.post("/predict", json={key: batches[0][1]})  # warm-up: first-call allocations, lazy imports
    latencies: list[float] = []
    for n in range(max(gate.requests, len(batches))):
        start, batch = batches[n % len(batches)]
        began = time.perf_counter()
        response = client.post("/predict", json={key: batch})
        latencies.append((time.perf_counter() - began) * 1000)
        if response.status_code != 200:
            detail = response.text[:200]
            return [Check("predicts", False, f"/predict answered {response.status_code}: {detail}")]
        answer = np.asarray(response.json()["probabilities"], dtype=np.float64)
        if answer.shape != (len(batch), expected.shape[1]):
            return [Check("predicts", False, f"/predict answered shape {answer.shape} for {len(batch)} rows")]
        got[start : start + len(batch)] = answer
    diff = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
    diff = diff if math.isfinite(diff) else math.inf
    p95 = float(np.percentile(latencies, 95))
    return [
        Check("predicts", True, f"/predict answered {len(latencies)} requests of up to {gate.batch_size} rows"),
        Check(
            "parity",
            diff <= gate.tolerance,
            f"max |served - offline| probability difference {diff:.2e} on {len(expected)} test rows "
            f"(at most {gate.tolerance:.0e})"
            + ("" if diff <= gate.tolerance else ": the served model answers differently"),
            diff,
            gate.tolerance,
        ),
        Check(
            "latency_p95_ms",
            p95 <= gate.max_latency_ms,
            f"p95 latency {p95:.1f} ms per request of {gate.batch_size} rows (at most {gate.max_latency_ms:g} ms)"
            + ("" if p95 <= gate.max_latency_ms else ": too slow"),
            p95,
            gate.max_latency_ms,
        ),
    ]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server (SIGTERM: uvicorn shuts down cleanly), kill it if it lingers, reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: Any, limit: int = 400) -> str:
    log.seek(0)
    text = log.read().decode("utf-8", "replace").strip()
    return ("..." + text[-limit:]) if len(text) > limit else (text or "no output")
