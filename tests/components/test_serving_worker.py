"""The lean serving worker and its supervisor: no heavy imports, the same answers, swaps without a failed request."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from components.features import TabularPreprocessor
from components.models import build_model
from components.onnx_export import export_onnx
from components.predictor import Predictor
from components.serving_state import listening_socket, write_state
from components.serving_supervisor import ChampionCache, Supervisor, WorkerOptions, cache_root
from components.serving_worker import state_loader

ROOT = Path(__file__).resolve().parents[2]
FRAME = pd.DataFrame(
    {
        "age": [20, 30, 40, 50, 25, 35, 45, 55],
        "sex": ["Male", "Female", "Male", "Female", "Male", "Male", "Female", "Female"],
        "employed": [True, False, True, True, False, True, False, True],
    }
)
ROWS = FRAME.to_dict(orient="records")
HEAVY = ("torch", "mlflow", "pandas", "sklearn", "safetensors", "lightning", "prefect")


def package(folder: Path, seed: int) -> tuple[Path, Predictor]:
    torch.manual_seed(seed)
    prep = TabularPreprocessor.fit(FRAME, ["age", "sex", "employed"])
    params = {"in_features": prep.width, "n_classes": 2, "hidden": [8]}
    model = Predictor(build_model("mlp", **params), prep, ["No", "Yes"], "mlp", params)
    path = model.save(folder)
    export_onnx(model, path)
    return path, model


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def wait_ready(client: httpx.Client, process: subprocess.Popen[bytes], version: str | None = None) -> None:
    for _ in range(600):
        assert process.poll() is None, "the worker exited"
        try:
            response = client.get("/ready")
            if response.status_code == 200 and (version is None or response.json()["version"] == version):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("the worker never got ready")


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """A worker process following a state file in tmp_path (not written yet)."""
    state = tmp_path / "state.json"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "components.serving_worker", "--state", str(state), "--port", str(port)]
    process = subprocess.Popen(argv, env=env(), stdin=subprocess.DEVNULL)
    try:
        yield process, port, state
    finally:
        process.terminate()
        process.wait(20)


def test_the_answering_path_loads_no_torch_mlflow_or_pandas_and_matches_torch(tmp_path: Path) -> None:
    path, model = package(tmp_path / "v1", seed=0)
    write_state(tmp_path / "state.json", "1", path, {"alias": "champion"})
    # A fresh interpreter does what a worker does (state file -> lean load -> app -> request).
    script = f"""
import json, sys
from pathlib import Path
from starlette.testclient import TestClient
from components.serving import create_app
from components.serving_worker import state_loader
app = create_app(state_loader(Path({str(tmp_path / "state.json")!r})), pipeline="toy", poll_seconds=0)
with TestClient(app) as client:
    answer = client.post("/predict", json={{"rows": json.loads({json.dumps(ROWS)!r})}}).json()
    modality = client.get("/metadata").json()["modality"]
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"answer": answer, "modality": modality, "modules": heavy}}))
"""
    done = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["modules"] == [] and result["modality"] == "tabular"
    assert result["answer"]["version"] == "1"
    expected = model.predict_proba(FRAME)  # the torch network, offline
    assert np.max(np.abs(np.asarray(result["answer"]["probabilities"]) - expected)) <= 1e-5


def test_a_package_without_onnx_still_serves_with_torch(tmp_path: Path) -> None:
    path, model = package(tmp_path / "v1", seed=0)
    (path / "model.onnx").unlink()
    write_state(tmp_path / "state.json", "1", path, {})
    loaded = state_loader(tmp_path / "state.json")()
    assert loaded is not None and loaded.predictor.backend == "torch"
    np.testing.assert_allclose(loaded.predictor.predict_records(ROWS), model.predict_proba(FRAME), atol=1e-6)


def test_state_loader_loads_each_version_once_and_keeps_serving_after_a_bad_package(tmp_path: Path) -> None:
    first, _ = package(tmp_path / "v1", seed=0)
    state = tmp_path / "state.json"
    load = state_loader(state)
    assert load() is None  # no state file yet: nothing to serve
    write_state(state, "1", first, {"alias": "champion"})
    one = load()
    assert one is not None and one.version == "1" and one.info == {"alias": "champion"}
    assert one.predictor.backend == "onnx" and one.predictor._net is None  # torch network never built
    assert load() is one  # unchanged file: the same object, no reload
    (tmp_path / "v2").mkdir()
    write_state(state, "2", tmp_path / "v2", {})  # an empty folder: not a package
    with pytest.raises(ValueError, match="not a model package"):
        load()
    assert load() is one  # not retried each poll; the version being served stays


def test_worker_swaps_to_the_new_state_without_a_failed_request(tmp_path: Path, worker) -> None:
    process, port, state = worker
    first, model_one = package(tmp_path / "v1", seed=0)
    second, model_two = package(tmp_path / "v2", seed=1)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(600):  # the worker answers 503 on /ready until the state file exists
            try:
                if client.get("/ready").status_code == 503:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert client.get("/ready").status_code == 503
        write_state(state, "1", first, {})
        wait_ready(client, process, "1")

        answered: list[tuple[str, list[list[float]]]] = []
        failures: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as own:
                while not stop.is_set():
                    response = own.post("/predict", json={"rows": ROWS})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        body = response.json()
                        answered.append((body["version"], body["probabilities"]))

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            while len(answered) < 5 and not failures:
                time.sleep(0.01)
            write_state(state, "2", second, {})
            for _ in range(600):
                if failures or (answered and answered[-1][0] == "2" and len(answered) > 10):
                    break
                time.sleep(0.02)
        finally:
            stop.set()
            sender.join(30)
    versions = [version for version, _ in answered]
    assert failures == [] and set(versions) == {"1", "2"}
    assert set(versions[versions.index("2") :]) == {"2"}  # never back to the old model
    expected = {"1": model_one.predict_proba(FRAME), "2": model_two.predict_proba(FRAME)}
    for version, probabilities in (answered[0], answered[-1]):
        assert np.max(np.abs(np.asarray(probabilities) - expected[version])) <= 1e-5


def test_listening_socket_is_tcp_so_that_nagle_is_turned_off() -> None:
    # asyncio sets TCP_NODELAY on accepted connections only for IPPROTO_TCP sockets; with proto
    # 0, each answer waited ~40 ms for the client's delayed ACK.
    with listening_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        with socket.socket(fileno=os.dup(sock.fileno())) as inherited:  # what a worker does with --fd
            assert (inherited.family, inherited.proto) == (socket.AF_INET, socket.IPPROTO_TCP)
        with socket.socket() as client:
            client.connect(sock.getsockname())
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP


def test_a_port_in_use_is_refused_at_once() -> None:
    with listening_socket("127.0.0.1", 0) as taken, pytest.raises(OSError):
        listening_socket("127.0.0.1", taken.getsockname()[1])


def test_cache_materialises_each_version_once_and_prunes(tmp_path: Path) -> None:
    source, _ = package(tmp_path / "source", seed=0)
    cache = ChampionCache(cache_root(tmp_path, "toy", "sqlite:///x.db"))
    assert cache.root != cache_root(tmp_path, "toy", "http://mlflow:5000")  # one folder per registry
    fetched: list[Path] = []

    def fetch(folder: Path) -> None:
        fetched.append(folder)
        shutil.copytree(source, folder)

    one = cache.package("1", fetch)
    assert cache.package("1", fetch) == one and len(fetched) == 1
    assert (one / "spec.json").is_file() and not list(cache.root.glob(".v*"))  # no staging left
    two = cache.package("2", fetch)
    assert cache.last() is None
    cache.remember({"version": "2", "package": str(two), "info": {"alias": "champion"}})
    assert cache.last() == {"version": "2", "package": str(two), "info": {"alias": "champion"}}
    cache.prune(["2"])
    assert not one.exists() and two.is_dir()


def test_supervisor_runs_workers_on_one_socket_swaps_them_and_stops_them(tmp_path: Path) -> None:
    first, _ = package(tmp_path / "p1", seed=0)
    second, model_two = package(tmp_path / "p2", seed=1)
    champion = {"version": "1", "source": first}
    cache = ChampionCache(tmp_path / "cache")

    def resolve() -> dict[str, object]:
        version, source = champion["version"], champion["source"]
        folder = cache.package(str(version), lambda target: shutil.copytree(source, target))
        return {"version": version, "package": str(folder), "info": {"alias": "champion"}}

    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    supervisor = Supervisor(sock, WorkerOptions("toy", 1_000_000), 2, cache, resolve, state_dir=tmp_path / "state")
    (tmp_path / "state").mkdir()
    try:
        pipes = supervisor.start_workers()
        assert supervisor.check() is True and supervisor.check() is False  # same champion: nothing to do
        assert supervisor.wait_listening(pipes)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_ready(client, supervisor.processes[0], "1")
            champion.update(version="2", source=second)
            assert supervisor.check() is True
            # Both workers share the socket: new connections reach either, and the kept-alive one
            # stays with its worker; each worker swaps on its own next poll, and all must answer v2.
            deadline = time.monotonic() + 60
            seen: set[str] = set()
            while time.monotonic() < deadline:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as fresh:
                    seen = {fresh.post("/predict", json={"rows": ROWS}).json()["version"] for _ in range(6)}
                answer = client.post("/predict", json={"rows": ROWS}).json()
                seen.add(answer["version"])
                if seen == {"2"}:
                    break
                time.sleep(0.1)
            assert seen == {"2"}
        np.testing.assert_allclose(answer["probabilities"], model_two.predict_proba(FRAME), atol=1e-5)
        assert cache.last() is not None and cache.last()["version"] == "2"  # what a restart starts with
        assert sorted(p.name for p in cache.root.glob("v*")) == ["v1", "v2"]
        assert supervisor.exited() is None
    finally:
        supervisor.stop_workers()
        sock.close()
    assert all(p.poll() is not None for p in supervisor.processes) and len(supervisor.processes) == 2


def test_outermost_layer_answers_predict_and_keeps_proxy_headers_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvicorn's proxy-headers layer is off in the worker and applied by worker_app to every
    # request the FastAPI app answers: a redirect behind a TLS proxy still points at https.
    from starlette.testclient import TestClient

    from components.serving import LoadedModel, create_app
    from components.serving_worker import worker_app

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    torch.manual_seed(0)
    frame = pd.DataFrame({"age": [20.0, 30.0], "sex": ["Male", "Female"]})
    prep = TabularPreprocessor.fit(frame, ["age", "sex"])
    params = {"in_features": prep.width, "n_classes": 2, "hidden": [4]}
    predictor = Predictor(build_model("mlp", **params), prep, ["No", "Yes"], "mlp", params)
    app = create_app(lambda: LoadedModel("7", predictor), pipeline="toy", poll_seconds=0)
    rows = frame.to_dict(orient="records")
    with TestClient(worker_app(app.state.core), follow_redirects=False) as client:
        answer = client.post("/predict", json={"rows": rows})
        assert answer.status_code == 200 and answer.json()["version"] == "7"
        np.testing.assert_allclose(answer.json()["probabilities"], predictor.predict_proba(frame), rtol=1e-6)
        redirect = client.get("/health/", headers={"x-forwarded-proto": "https"})
        assert redirect.status_code == 307 and redirect.headers["location"].startswith("https://")
        metrics = client.get("/metrics").text
    assert 'deepgate_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in metrics


def test_the_worker_answers_before_fastapi_is_imported_and_as_the_app_does(tmp_path: Path) -> None:
    # A worker is ready without FastAPI (half its start-up): the core answers /predict,
    # /health and /ready itself, byte for byte as the FastAPI routes do; the first request for
    # anything else builds the app (in a fresh interpreter, to see what is imported when).
    path, _ = package(tmp_path / "v1", seed=0)
    write_state(tmp_path / "state.json", "1", path, {"alias": "champion"})
    script = f"""
import asyncio, json, sys
from pathlib import Path
from components.serving_core import ServingCore
from components.serving_worker import state_loader, worker_app

async def call(app, method, path, body=b""):
    scope = {{"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "scheme": "http", "root_path": "",
             "http_version": "1.1", "asgi": {{"version": "3.0"}}}}
    sent, messages = [], [{{"type": "http.request", "body": body, "more_body": False}}]
    async def receive():
        return messages.pop(0) if messages else {{"type": "http.disconnect"}}
    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = sorted((k.decode(), v.decode()) for k, v in start["headers"])
    return [start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:]).decode()]

async def main():
    state = Path({str(tmp_path / "state.json")!r})
    missing = Path({str(tmp_path / "missing.json")!r})
    empty = ServingCore(state_loader(missing), pipeline="toy", poll_seconds=0)
    await empty.startup()
    core = ServingCore(state_loader(state), pipeline="toy", poll_seconds=0)
    await core.startup()
    app = worker_app(core)
    row = json.dumps({{"rows": json.loads({json.dumps([ROWS[0]])!r})}}).encode()
    raw = {{
        "not ready": await call(worker_app(empty), "GET", "/ready"),
        "ready": await call(app, "GET", "/ready"),
        "health": await call(app, "GET", "/health"),
        "predict": await call(app, "POST", "/predict", row),
    }}
    before = sorted(m for m in ("fastapi", "starlette", "anyio") if m in sys.modules)
    meta = await call(app, "GET", "/metadata")
    after = "fastapi" in sys.modules
    # The same questions through the FastAPI routes themselves (no fast path).
    from components.serving import app_for
    documented = app_for(core, lifespan=False)
    documented.fast_predict = None
    through_app = {{
        "not ready": await call(app_for(empty, lifespan=False), "GET", "/ready"),
        "ready": await call(documented, "GET", "/ready"),
        "health": await call(documented, "GET", "/health"),
        "predict": await call(documented, "POST", "/predict", row),
    }}
    print(json.dumps({{"raw": raw, "app": through_app, "before": before, "after": after, "meta": meta[0]}}))

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] == [] and result["after"] is True and result["meta"] == 200
    assert result["raw"] == result["app"]
    assert result["raw"]["not ready"][0] == 503 and result["raw"]["ready"][0] == 200
    assert json.loads(result["raw"]["ready"][2]) == {"status": "ready", "version": "1"}
    assert json.loads(result["raw"]["predict"][2])["version"] == "1"
