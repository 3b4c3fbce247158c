"""Fixtures shared by the flow and CLI tests: the in-process CLI and a recording events client."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dvc  # noqa: F401  (see below)
import pytest
from prefect.events.clients import AssertingEventsClient
from prefect.events.worker import EventsWorker
from rich.console import Console
from typer.testing import CliRunner

from flows import cli

# `import dvc` binds DVC's log handlers to the sys.stdout of that moment, and they raise on a
# closed stream. Imported here, they get pytest's stream; first imported inside a CliRunner
# call, they would keep that call's stream, closed once it returns, and the next workspace's
# "Initialized DVC repository" line would crash the flow. (One command per process, as in
# real use, never meets this.)


@pytest.fixture
def deepgate(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str]]:
    """Invoke the CLI in-process; returns (exit code, everything it printed)."""
    # The CLI fills this with os.environ.setdefault: set it here so that it is undone.
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Never the developer's own Prefect server on :4200: the CLI would send these test runs
    # there and leave PREFECT_API_URL set for the rest of the session.
    monkeypatch.setattr(cli, "_answers", lambda url: False)
    # A wide console, so that the tables' cells are never folded or cut short.
    monkeypatch.setattr(cli, "console", Console(width=250))
    monkeypatch.setattr(cli, "err", Console(width=250, stderr=True))
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli.app, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    return invoke


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventsWorker]:
    """Events go to a recording client instead of the server (Prefect's asserting_events_worker)."""
    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)
    yield worker
    worker.drain()
