"""Scheduled retraining: one cron deployment per pipeline, carrying its validated config."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import PipelineConfig, load_pipeline
from flows.retrain import deployments

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_one_nightly_deployment_per_pipeline_with_its_config() -> None:
    configs = [load_pipeline(name, params_path=PARAMS) for name in ("arrests", "mnist")]
    planned = deployments(configs, cron="0 3 * * *", home="/srv/deepgate")

    assert [d.name for d in planned] == ["arrests-nightly", "mnist-nightly"]
    for deployment, config in zip(planned, configs, strict=True):
        [schedule] = deployment.schedules
        assert schedule.schedule.cron == "0 3 * * *"
        assert deployment.parameters["home"] == "/srv/deepgate"
        # The parameters round-trip into the same config, so a scheduled run trains exactly it.
        assert PipelineConfig.model_validate(deployment.parameters["config"]) == config


@pytest.mark.flow
def test_schedule_registers_the_deployments_on_a_work_pool(prefect_server, monkeypatch: pytest.MonkeyPatch) -> None:
    # What infra/ runs in the image: `deepgate schedule --work-pool POOL`, then a worker of that
    # pool starts the runs from the same directory (no code upload).
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from typer.testing import CliRunner

    from flows import cli

    monkeypatch.setattr(cli, "_answers", lambda url: False)  # never a developer's server on :4200
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    monkeypatch.setenv("DEEPGATE_HOME", str(PARAMS.parent))
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="deepgate-test-process", type="process"), overwrite=True)
    result = CliRunner().invoke(cli.app, ["schedule", "arrests", "--work-pool", "deepgate-test-process"])

    assert result.exit_code == 0, result.output
    assert "registered 2 deployment(s) on work pool 'deepgate-test-process'" in result.output
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/arrests-nightly")
        monitoring = client.read_deployment_by_name("monitor/arrests-monitor")
        # The retraining trigger is registered with it, as an automation the server evaluates.
        [automation] = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
    assert automation.trigger.expect == {"deepgate.dataset.updated", "deepgate.drift.detected"}
    assert monitoring.work_pool_name == "deepgate-test-process"
    assert monitoring.entrypoint == "flows/monitor.py:monitor"
    assert deployment.work_pool_name == "deepgate-test-process"
    assert deployment.entrypoint == "flows/retrain.py:retrain"
    assert deployment.parameters["home"] == str(PARAMS.parent)
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 * * *"
