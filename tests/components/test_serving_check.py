"""Serving validation in a separate process: passes on a good package, fails with the reason, never leaks the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components import serving_check
from components.config import ServingGate
from components.features import TabularPreprocessor
from components.models import build_model
from components.onnx_export import ONNX_FILE, export_onnx
from components.predictor import Predictor

FRAME = pd.DataFrame(
    {
        "age": [20, 30, 40, 50, 25, 35, 45, 55, 60, 22],
        "sex": ["Male", "Female", "Male", "Female", "Male", "Male", "Female", "Female", "Male", "Female"],
        "employed": [True, False, True, True, False, True, False, True, True, False],
    }
)
ROWS = FRAME.to_dict(orient="records")
GATE = ServingGate(startup_seconds=60, batch_size=4, requests=6)


def predictor(seed: int = 0) -> Predictor:
    torch.manual_seed(seed)
    prep = TabularPreprocessor.fit(FRAME, ["age", "sex", "employed"])
    params = {"in_features": prep.width, "n_classes": 2, "hidden": [8]}
    return Predictor(build_model("mlp", **params), prep, ["No", "Yes"], "mlp", params)


def package(tmp_path: Path, model: Predictor) -> Path:
    path = model.save(tmp_path / "package")
    export_onnx(model, path)
    return path


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every server process the check starts; the test asserts each one has exited."""
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        process = real(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(serving_check.subprocess, "Popen", recording)
    return started


def check(path: Path, expected: np.ndarray, gate: ServingGate = GATE, **kwargs):  # type: ignore[no-untyped-def]
    return serving_check.check_serving_process(path, "rows", ROWS, expected, "7", "toy", gate, **kwargs)


def assert_cleaned_up(servers: list[subprocess.Popen[bytes]]) -> None:
    assert len(servers) == 1
    assert servers[0].poll() is not None  # terminated and reaped: no stray server


def test_good_package_passes(tmp_path: Path, servers) -> None:
    model = predictor()
    report = check(package(tmp_path, model), model.predict_proba(FRAME))
    assert report.passed, [c.detail for c in report.checks]
    assert [c.name for c in report.checks] == ["starts", "predicts", "parity", "latency_p95_ms"]
    assert report.figures["parity"] <= 1e-5
    assert 0 < report.figures["latency_p95_ms"] <= GATE.max_latency_ms
    assert report.figures["startup_seconds"] > 0
    assert_cleaned_up(servers)


def test_wrong_answers_and_slow_server_fail_with_the_figures(tmp_path: Path, servers) -> None:
    model = predictor()
    path = package(tmp_path, model)
    # The ONNX graph of another network: it loads and serves, but answers differently.
    export_onnx(predictor(seed=1), tmp_path / "other")
    (tmp_path / "other" / ONNX_FILE).replace(path / ONNX_FILE)
    report = check(path, model.predict_proba(FRAME), GATE.model_copy(update={"max_latency_ms": 0.001}))
    failed = {c.name: c for c in report.failures()}
    assert set(failed) == {"parity", "latency_p95_ms"}
    assert failed["parity"].value > 1e-5 and "answers differently" in failed["parity"].detail
    assert "too slow" in failed["latency_p95_ms"].detail and failed["latency_p95_ms"].value > 0.001
    assert_cleaned_up(servers)


def test_tampered_package_does_not_start(tmp_path: Path, servers) -> None:
    model = predictor()
    path = package(tmp_path, model)
    (path / ONNX_FILE).write_bytes(b"\x08\x07tampered")
    report = check(path, model.predict_proba(FRAME))
    assert not report.passed
    (failure,) = report.failures()
    assert failure.name == "starts" and "exited with code" in failure.detail and "model.onnx" in failure.detail
    assert_cleaned_up(servers)


def test_server_that_never_gets_ready_is_stopped(tmp_path: Path, servers) -> None:
    hang = [sys.executable, "-c", "import time; time.sleep(120)"]
    report = check(tmp_path, np.zeros((len(ROWS), 2)), GATE.model_copy(update={"startup_seconds": 1}), command=hang)
    (failure,) = report.failures()
    assert failure.name == "starts" and "did not answer /ready within 1s" in failure.detail
    assert_cleaned_up(servers)
