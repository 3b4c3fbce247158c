"""Retraining triggers: the data version announced once, and the deployments' event triggers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.events.clients import AssertingEventsClient
from prefect.events.worker import EventsWorker

from components import names
from components.config import PipelineConfig
from components.versioning import DataVersion
from flows.retrain import announce

# Events need a Prefect API to go to: without one, the first event starts a temporary server.
pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]

CONFIG = PipelineConfig.model_validate(
    {"name": "people", "data": {"source": "csv:people.csv", "target": "label"}, "train": {"arch": "mlp"}}
)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventsWorker]:
    """Events go to a recording client instead of the server (Prefect's asserting_events_worker)."""
    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)
    yield worker
    worker.drain()


def _announced(worker: EventsWorker) -> list:
    worker.wait_until_empty()
    assert isinstance(worker._client, AssertingEventsClient)
    return [e for e in worker._client.events if e.event == names.EVENT_DATASET_UPDATED]


class _Runs:
    """The registry's record of which run saw which data version (MLflow's search, in memory: a
    real store costs 14 s to create; `Registry.data_version_seen` runs for real in the flow tests)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def start_run(self, pipeline: str, name: str, tags: dict[str, str]) -> str:
        self.data[name] = tags[names.TAG_DATA_VERSION]
        return name

    def data_version_seen(self, pipeline: str, md5: str, *, besides: str) -> bool:
        return any(seen == md5 for run, seen in self.data.items() if run != besides)


def test_a_new_data_version_is_announced_once(events: EventsWorker) -> None:
    registry = _Runs()
    data = DataVersion("data/people/dataset.parquet", "abc123", 10, 1)
    first = registry.start_run("people", "first", {names.TAG_DATA_VERSION: "abc123"})

    assert announce.fn(registry, CONFIG, data, first, trained_on="old999")
    [event] = _announced(events)
    assert event.resource.id == "deepgate.pipeline.people" and event.resource["deepgate.pipeline"] == "people"
    assert event.payload["md5"] == "abc123" and event.payload["mlflow_run_id"] == first

    # The run that this event starts sees the same version, already recorded: no second event.
    second = registry.start_run("people", "second", {names.TAG_DATA_VERSION: "abc123"})
    assert not announce.fn(registry, CONFIG, data, second, trained_on="old999")
    # Nor is the champion's own data version news.
    assert not announce.fn(registry, CONFIG, data, first, trained_on="abc123")
    assert len(_announced(events)) == 1
