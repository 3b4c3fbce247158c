"""Drift monitoring of the served model: one thin flow over components/monitoring.py.

```
champion -> its training data (DVC) -> logged predictions (window) -> compare
   -> MLflow run (kind monitor) + Prefect artifact -> on drift: event deepgate.drift.detected
```
The event names the pipeline as its resource; the pipeline's retraining deployment has a
trigger on it (flows/retrain.py `deployments`), so drift starts a retraining run, which then
goes through every gate as a scheduled one does.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.events import emit_event

from components import names
from components.config import PipelineConfig
from components.dataset import Dataset
from components.monitoring import (
    LoggedPredictions,
    MonitorReport,
    compare_with_training,
    prediction_log_path,
    read_prediction_log,
    window_start,
)
from components.registry import Registry
from components.settings import load_settings
from flows.retrain import config_key, pipeline_deployment, reference_data

_task = task(cache_policy=NO_CACHE, persist_result=False)


@_task(name="read_prediction_log")
def read_log(path: Path, config: PipelineConfig) -> LoggedPredictions:
    """The latest logged predictions within the configured window."""
    return read_prediction_log(path, since=window_start(config.monitor), limit=config.monitor.max_rows)


@_task(name="compare_with_training")
def compare(
    reference: Dataset | None, logged: LoggedPredictions, config: PipelineConfig, champion: str | None
) -> MonitorReport:
    """Per-feature PSI/KS of the logged inputs, and PSI of the predicted classes, against the training data."""
    return compare_with_training(
        reference, logged, config.data, config.gates.drift, config.monitor, pipeline=config.name, champion=champion
    )


def record(registry: Registry, report: MonitorReport, flow_run_id: str) -> str:
    """Log the report to an MLflow run of kind `monitor` in the pipeline's experiment; returns its id."""
    run_id = registry.start_run(
        report.pipeline,
        f"monitor-{flow_run_id[:8]}",
        {
            names.TAG_PIPELINE: report.pipeline,
            names.TAG_RUN_KIND: names.RUN_KIND_MONITOR,
            names.TAG_FLOW_RUN_ID: flow_run_id,
            names.TAG_MONITOR_VERDICT: report.verdict,
            **({names.TAG_MONITOR_CHAMPION: report.champion} if report.champion else {}),
        },
    )
    registry.log_dict(run_id, report.to_dict(), "monitor/report.json")
    registry.log_text(run_id, report.to_markdown(), "monitor/report.md")
    registry.log_metrics(run_id, {f"monitor.{k}": v for k, v in report.report.figures.items()})
    registry.end_run(run_id, "FINISHED")
    return run_id


def emit_drift(report: MonitorReport, run_id: str) -> None:
    """Emit `deepgate.drift.detected` for the pipeline (what its retraining trigger waits for)."""
    emit_event(
        names.EVENT_DRIFT_DETECTED,
        resource=names.pipeline_resource(report.pipeline),
        payload={
            "champion": report.champion,
            "rows": report.rows,
            "drifted": [c.name for c in report.drifted_checks()],
            "headline": report.headline(),
            "mlflow_run_id": run_id,
        },
    )


@flow(name="monitor", log_prints=True)
def monitor(config: PipelineConfig, home: str | None = None, log_path: str | None = None) -> MonitorReport:
    """Compare the served model's logged inputs and predictions with its training data.

    Args:
        config: The validated pipeline configuration.
        home: Project workspace (default: `DEEPGATE_HOME` or the current directory).
        log_path: The prediction log (default: `.deepgate/predictions/<pipeline>.sqlite`).

    Returns:
        The report; when its verdict is `drifted`, `deepgate.drift.detected` has been emitted.
    """
    settings = load_settings(Path(home) if home else None)
    registry = Registry(settings)
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    champion = registry.alias_version(config.name, names.CHAMPION)
    reference = reference_data(settings, config, champion)
    path = Path(log_path) if log_path else prediction_log_path(settings.home, config.name)
    logged = read_log(path, config)
    report = compare(reference, logged, config, None if champion is None else champion.version)
    run_id = record(registry, report, flow_run_id)
    create_markdown_artifact(
        key=f"{config_key(config.name)}-monitor", markdown=report.to_markdown(), description="deepgate drift monitor"
    )
    if report.drifted:
        emit_drift(report, run_id)
    get_run_logger().info("%s: %s", config.name, report.headline())
    return report


def monitor_deployments(configs: list[PipelineConfig], *, cron: str, home: str) -> list:
    """One scheduled `monitor` deployment per pipeline (`<pipeline>-monitor`), served beside retraining."""
    return [
        pipeline_deployment(
            monitor,
            config,
            "monitor",
            cron=cron,
            home=home,
            description=f"Drift of {config.name}'s logged production inputs and predictions; drift starts retraining.",
        )
        for config in configs
    ]
