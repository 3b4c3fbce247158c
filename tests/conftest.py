"""Shared test set-up: isolated state, one Prefect server per session, tiny pipeline configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before prefect/GX/MLflow are imported anywhere: no analytics, and no state outside the test
# session's own temporary folders (never the user's ~/.prefect or the project's mlflow/).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="deepgate-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
for variable in (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "DEEPGATE_HOME",
    "DEEPGATE_DVC_REMOTE",
    "DEEPGATE_ARTIFACT_ROOT",
    "PREFECT_API_URL",
):
    os.environ.pop(variable, None)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (on a sqlite file) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project workspace (params.yaml, DVC repo, MLflow store) for one test."""
    home = tmp_path / "project"
    home.mkdir()
    (home / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(home)
    monkeypatch.setenv("DEEPGATE_HOME", str(home))
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(variable, raising=False)
    return home
