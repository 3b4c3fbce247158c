"""Scheduled retraining: one cron deployment per pipeline, carrying its validated config."""

from __future__ import annotations

from pathlib import Path

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
