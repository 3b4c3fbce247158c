"""The integration tier: real servers on loopback, started once per test session (see live_servers.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))  # the shared tiny pipeline (toronto.py)

from live_servers import Services, running_services


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """PostgreSQL, moto's S3, `mlflow server` and `prefect server start`, for the whole session."""
    yield from running_services()
