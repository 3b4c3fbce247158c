"""`tune`: the hyperparameter search as a flow. Wiring only; the search is components/tuning.py.

```
ingest -> version (DVC) -> validate -> check labels -> split [-> label noise, quarantine]
   -> search (Optuna; a nested MLflow run per trial) -> write the override file
```
The data steps are the retrain flow's own tasks, so a search fits and scores on exactly the
rows that retraining trains and early-stops on; the test split is left to retraining's
evaluation. Nothing is registered: the result is a file of values for
`deepgate run PIPELINE --overrides FILE`, and a parent MLflow run with a nested run per trial.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context

from components import names, tuning
from components.config import PipelineConfig, build_config, read_overrides
from components.dataset import DataLoadError, Dataset
from components.gates import Check, GateReport
from components.label_noise import quarantine
from components.lineage import code_hash, git_commit
from components.predictor import Predictor
from components.registry import Registry
from components.settings import Settings, load_settings
from components.split import SplitIndices
from components.suites import load_suite, suite_path
from components.validation import build_suite
from flows.retrain import base_model, check, config_key, ingest, label_noise, split, validate, version

TUNED_DIR = "tuned"


class TuneStopped(RuntimeError):
    """A data or label gate stopped the search before any trial."""

    def __init__(self, report: GateReport) -> None:
        failed = "; ".join(c.detail for c in report.failures()[:5])
        super().__init__(f"gate '{report.gate}' stopped the search: {failed}")
        self.report = report


def default_overrides_path(home: Path, pipeline: str) -> Path:
    """Where `deepgate tune` writes a pipeline's best values unless told otherwise."""
    return home / TUNED_DIR / f"{pipeline}.yaml"


class MlflowTrials(tuning.TuneCallbacks):
    """Each trial as an MLflow run nested under the search's run, and a progress line per trial."""

    def __init__(
        self, registry: Registry, config: PipelineConfig, parent_run_id: str, total: int, say: Callable[[str], Any]
    ) -> None:
        self.registry, self.config, self.parent, self.total, self.say = registry, config, parent_run_id, total, say
        self.run_id: str | None = None  # the trial in progress

    def trial_started(self, number: int, params: dict[str, Any], config: PipelineConfig) -> None:
        """Open the trial's nested run and log its values."""
        tags = {
            names.TAG_PIPELINE: self.config.name,
            names.TAG_RUN_KIND: names.RUN_KIND_TUNE_TRIAL,
            names.TAG_TUNE_TRIAL: str(number),
        }
        self.run_id = self.registry.start_run(self.config.name, f"trial-{number}", tags, parent_run_id=self.parent)
        self.registry.log_params(self.run_id, {**params, "train.max_epochs": config.train.max_epochs})

    def epoch_ended(self, number: int, record: dict[str, Any]) -> None:
        """Log the epoch's losses, accuracy and learning rate."""
        assert self.run_id is not None
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        self.registry.log_metrics(self.run_id, metrics, step=int(record["epoch"]))

    def trial_ended(self, outcome: tuning.TrialOutcome) -> None:
        """Record the state and objective, close the run, print the progress line."""
        assert self.run_id is not None
        metric = self.config.tune.metric
        tags = {names.TAG_TUNE_STATE: outcome.state, "deepgate.tune.detail": outcome.detail[:5000]}
        if outcome.baseline:
            tags[names.TAG_TUNE_BASELINE] = "true"
        self.registry.set_run_tags(self.run_id, tags)
        self.registry.log_metrics(self.run_id, {f"objective.{metric}": outcome.value})
        self.registry.log_metrics(self.parent, {f"trials.{metric}": outcome.value}, step=outcome.number)
        self.close("FAILED" if outcome.state == "failed" else "FINISHED")
        self.say(tuning.describe(outcome, metric, self.total))

    def close(self, status: str) -> None:
        """End the open trial run (also when the search itself crashed mid-trial)."""
        if self.run_id is not None:
            self.registry.end_run(self.run_id, status)
            self.run_id = None


_task = task(cache_policy=NO_CACHE, persist_result=False)


@_task(name="search")
def search(
    config: PipelineConfig,
    dataset: Dataset,
    indices: SplitIndices,
    trials: int,
    registry: Registry,
    parent_run_id: str,
    base: Predictor | None,
) -> tuning.TuneResult:
    """Run the trials, one nested MLflow run each; one progress line per trial."""
    tracker = MlflowTrials(registry, config, parent_run_id, trials, get_run_logger().info)
    try:
        return tuning.tune_hyperparameters(config, dataset, indices, trials=trials, callbacks=tracker, base=base)
    finally:
        tracker.close("FAILED")  # only open here if a trial crashed


def _gate(registry: Registry, run_id: str, report: GateReport) -> None:
    registry.log_dict(run_id, report.to_dict(), f"gates/{report.gate}.json")
    if not report.passed:
        raise TuneStopped(report)


def _prepare(
    config: PipelineConfig, settings: Settings, registry: Registry, run_id: str, summary: tuning.TuneSummary
) -> tuple[Dataset, SplitIndices]:
    """The retrain flow's data steps: the same rows, validated the same way."""
    try:
        dataset, path = ingest(config, settings)
    except DataLoadError as error:
        report = GateReport("ingest", [Check("readable", False, str(error))])
        registry.log_dict(run_id, report.to_dict(), "gates/ingest.json")
        raise TuneStopped(report) from None
    summary.rows = len(dataset)
    data = version(settings, path)
    summary.data_version = data.md5
    registry.set_run_tags(run_id, {names.TAG_DATA_VERSION: data.md5, names.TAG_DATA_PATH: data.path})
    suite = load_suite(suite_path(settings.home, config.name))
    if suite is None:
        suite = build_suite(dataset, config.data, config.gates.validation)
        summary.notes.append("no stored suite yet: validated against one built from this data (not saved)")
    _gate(registry, run_id, validate(dataset, config, suite))
    _gate(registry, run_id, check(dataset, config))
    indices = split(dataset, config)
    if config.gates.labels.quarantine:
        indices, dropped = quarantine(indices, label_noise(dataset, indices, config))
        summary.notes.append(f"quarantine: {dropped} suspected mislabeled rows left out of training, as in retrain")
    summary.split = indices.sizes()
    return dataset, indices


def _header(config: PipelineConfig, result: tuning.TuneResult, summary: tuning.TuneSummary) -> list[str]:
    best, baseline, counts = result.best, result.baseline, result.counts()
    assert best is not None and best.value is not None
    lines = [
        f"deepgate tune {config.name}: the best of {len(result.trials)} trials ({counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['failed']} failed) by {result.metric} on the validation split",
        f"trial {best.number}: {result.metric} {best.value:.6g}",
    ]
    if baseline is not None and baseline.value is not None and baseline.state == "complete":
        lines[-1] += f" (the current settings, trial {baseline.number}: {baseline.value:.6g})"
    if config.tune.max_epochs is not None and config.tune.max_epochs < config.train.max_epochs:
        lines.append(
            f"each trial trained at most {config.tune.max_epochs} epochs (tune.max_epochs); "
            f"retraining runs up to train.max_epochs = {config.train.max_epochs}"
        )
    lines += [
        f"data version {summary.data_version}, MLflow run {summary.mlflow_run_id}, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "use it: deepgate run <pipeline> --overrides <this file>  (applied before any --set)",
    ]
    return lines


def _write_overrides(config: PipelineConfig, result: tuning.TuneResult, summary: tuning.TuneSummary, out: Path) -> str:
    text = tuning.overrides_yaml(result, _header(config, result, summary))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    # Read back through the same loader `deepgate run --overrides` uses: a file that would not
    # load must fail here, not at the next retraining.
    build_config(config.model_dump(mode="json"), origin=str(out), values=read_overrides(out))
    return text


def _record(registry: Registry, run_id: str, result: tuning.TuneResult, overrides: str | None) -> None:
    best, baseline, metric = result.best, result.baseline, result.metric
    registry.log_metrics(
        run_id,
        {
            f"best.{metric}": None if best is None else best.value,
            f"baseline.{metric}": None if baseline is None else baseline.value,
            **{f"trials.{state}": float(n) for state, n in result.counts().items()},
        },
    )
    if best is not None:
        registry.log_params(run_id, {f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
        registry.set_run_tags(run_id, {"deepgate.tune.best_trial": str(best.number)})
    registry.log_dict(run_id, result.to_dict(), "tuning/trials.json")
    registry.log_text(run_id, result.to_markdown(), "tuning/trials.md")
    if overrides is not None:
        registry.log_text(run_id, overrides, "tuning/overrides.yaml")


@flow(name="tune", log_prints=True)
def tune(
    config: PipelineConfig, trials: int | None = None, out: str | None = None, home: str | None = None
) -> tuning.TuneSummary:
    """Search a pipeline's hyperparameters and write the best values as an override file.

    Args:
        config: The validated pipeline configuration (its `tune:` section steers the search).
        trials: Number of trials (default: `tune.trials`).
        out: The override file to write (default: `tuned/<pipeline>.yaml` in the workspace).
        home: Project workspace (default: `DEEPGATE_HOME` or the current directory).

    Returns:
        The :class:`~components.tuning.TuneSummary`; `overrides_path` is None when no trial completed.

    Raises:
        TuneStopped: A data or label gate failed; no trial ran.
    """
    settings = load_settings(Path(home) if home else None)
    registry = Registry(settings)
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    n_trials = trials or config.tune.trials
    run_id = registry.start_run(
        config.name,
        f"tune-{flow_run_id[:8]}",
        {
            names.TAG_PIPELINE: config.name,
            names.TAG_RUN_KIND: names.RUN_KIND_TUNE,
            names.TAG_FLOW_RUN_ID: flow_run_id,
            names.TAG_CODE_HASH: code_hash(),
            names.TAG_GIT_COMMIT: git_commit(settings.home),
            names.TAG_CONFIG_HASH: config.config_hash(),
        },
    )
    space = {k: v.model_dump(mode="json") for k, v in tuning.search_space(config).items()}
    registry.log_params(
        run_id, {"tune": {**config.tune.model_dump(mode="json", exclude={"space"}), "trials": n_trials}}
    )
    registry.log_dict(run_id, space, "tuning/space.json")
    summary = tuning.TuneSummary(tuning.TuneResult(config.name, config.tune.metric), mlflow_run_id=run_id)
    try:
        dataset, indices = _prepare(config, settings, registry, run_id, summary)
        # Transfer and warm start: trials start from the model retraining would start from.
        base, base_ref = base_model(registry, config, registry.alias_version(config.name, names.CHAMPION))
        if base_ref:
            registry.set_run_tags(run_id, {names.TAG_BASE_MODEL: base_ref})
        summary.result = search(config, dataset, indices, n_trials, registry, run_id, base)
        overrides = None
        if summary.result.best is not None:
            target = Path(out) if out else default_overrides_path(settings.home, config.name)
            overrides = _write_overrides(config, summary.result, summary, target)
            summary.overrides_path = str(target)
        else:
            summary.notes.append("no trial completed (all pruned or failed): no override file written")
        _record(registry, run_id, summary.result, overrides)
    except TuneStopped:
        registry.set_run_tags(run_id, {"deepgate.outcome": "stopped"})
        registry.end_run(run_id, "FAILED")
        raise
    except BaseException:
        registry.end_run(run_id, "FAILED")
        raise
    outcome = "tuned" if summary.overrides_path else "no_result"
    registry.set_run_tags(run_id, {"deepgate.outcome": outcome})
    registry.end_run(run_id, "FINISHED")
    create_markdown_artifact(
        key=f"{config_key(config.name)}-tuning", markdown=summary.result.to_markdown(), description="deepgate tune"
    )
    return summary
