"""The monitor flow against a champion whose data lives in DVC: report, MLflow run, and the drift event."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.events.clients import AssertingEventsClient
from prefect.events.worker import EventsWorker
from rich.console import Console
from typer.testing import CliRunner

from components import names
from components.config import PipelineConfig
from components.monitoring import prediction_log_path
from components.prediction_log import INSERT, SCHEMA
from components.registry import Registry
from components.settings import load_settings
from components.versioning import version_dataset
from flows import cli
from flows.monitor import monitor

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]

N = 400
CONFIG = PipelineConfig.model_validate(
    {
        "name": "people",
        "data": {"source": "csv:people.csv", "target": "label"},
        "train": {"arch": "mlp"},
        "monitor": {"min_rows": 100},
    }
)


def _people(seed: int, age: float = 30.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.normal(age, 5, N).round(1), "colour": rng.choice(["Black", "White"], N)})


def _champion(workspace: Path) -> Registry:
    """A registered champion whose data version (tags) is the reference table, pushed to DVC."""
    settings = load_settings(workspace)
    table = _people(0).assign(label=np.random.default_rng(0).choice(["Yes", "No"], N, p=[0.8, 0.2]))
    path = workspace / "data" / "people" / "dataset.parquet"
    path.parent.mkdir(parents=True)
    table.to_parquet(path, index=False)
    data = version_dataset(settings.home, path, settings.dvc_remote)
    registry = Registry(settings)
    # The champion's training run recorded its data version, as a retrain run does.
    run_id = registry.start_run("people", "seed", {names.TAG_DATA_VERSION: data.md5})
    model = names.registered_model_name("people")
    registry.client.create_registered_model(model)
    tags = {names.TAG_DATA_VERSION: data.md5, names.TAG_DATA_PATH: "data/people/dataset.parquet"}
    version = registry.client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    registry.client.set_registered_model_alias(model, names.CHAMPION, version.version)
    return registry


def _log(workspace: Path, rows: pd.DataFrame, yes: float) -> None:
    path = prediction_log_path(workspace, "people")
    path.parent.mkdir(parents=True, exist_ok=True)
    answers = np.random.default_rng(1).choice(["Yes", "No"], len(rows), p=[yes, 1 - yes])
    connection = sqlite3.connect(path)
    connection.execute(SCHEMA)
    connection.executemany(
        INSERT,
        [
            (time.time(), "1", json.dumps(r), a, "[0.5, 0.5]")
            for r, a in zip(rows.to_dict("records"), answers, strict=True)
        ],
    )
    connection.commit()
    connection.close()


def _drift_events(worker: EventsWorker) -> list:
    worker.wait_until_empty()
    assert isinstance(worker._client, AssertingEventsClient)
    return [e for e in worker._client.events if e.event == names.EVENT_DRIFT_DETECTED]


def test_drifted_inputs_are_recorded_and_emit_the_retraining_event(workspace: Path, events: EventsWorker) -> None:
    registry = _champion(workspace)
    _log(workspace, _people(1, age=42.0), yes=0.8)

    report = monitor(CONFIG, home=str(workspace))

    assert report.verdict == "drifted" and report.champion == "1"
    assert [c.name for c in report.drifted_checks()] == ["drift(age)"]
    [event] = _drift_events(events)
    assert event.resource.id == "deepgate.pipeline.people"
    assert event.resource["deepgate.pipeline"] == "people"
    assert event.payload["drifted"] == ["drift(age)"] and event.payload["champion"] == "1"
    # The report is on an MLflow run of kind monitor, which the event points at.
    run = registry.client.get_run(event.payload["mlflow_run_id"])
    assert run.data.tags[names.TAG_RUN_KIND] == names.RUN_KIND_MONITOR
    assert run.data.tags[names.TAG_MONITOR_VERDICT] == "drifted"
    assert run.data.metrics["monitor.drifted_features"] == 1.0
    # The retraining this event starts ingests the same data: recorded already, so not announced again.
    champion = registry.alias_version("people", names.CHAMPION)
    assert champion is not None
    md5 = champion.tags[names.TAG_DATA_VERSION]
    assert registry.data_version_seen("people", md5, besides="the-triggered-run")
    assert not registry.data_version_seen("people", md5, besides=champion.run_id)


def test_deepgate_monitor_without_a_champion_says_so_and_emits_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, events: EventsWorker
) -> None:
    monkeypatch.setattr(cli, "_answers", lambda url: False)  # never a developer's server on :4200
    monkeypatch.setattr(cli, "console", Console(width=250))

    result = CliRunner().invoke(cli.app, ["monitor", "arrests", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["verdict"] == "no_reference"
    assert _drift_events(events) == []


def test_deepgate_monitor_needs_a_pipeline_or_a_config_file(workspace: Path) -> None:
    result = CliRunner().invoke(cli.app, ["monitor"])

    assert result.exit_code == 1
    assert "name a pipeline" in result.output
