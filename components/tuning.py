"""Hyperparameter search with Optuna: the space, the objective, pruning, and the result.

Each trial fits the pipeline's network on the training split with the trial's values and is
scored on the validation split, at the epoch whose weights early stopping keeps. The test
split is never looked at: it stays the unbiased estimate of the model that retraining with
the tuned values produces. Poor trials are pruned from `train_model`'s per-epoch callback
(`trial.report` + :class:`optuna.TrialPruned`); the sampler is TPE seeded with `train.seed`, and
every trial starts from the same initial-weight seed, so a search is reproducible and trials
differ by their hyperparameters rather than by the luck of the initialisation.

Tracking is the caller's: :class:`TuneCallbacks` hears of each trial's start, epochs and end
(the flow turns them into nested MLflow runs). Nothing here touches files, MLflow or prefect.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import optuna
import yaml

from components.config import Choice, FloatRange, IntRange, PipelineConfig, build_config
from components.dataset import Dataset
from components.modeling import fit_candidate
from components.split import SplitIndices
from components.training import TrainingDiverged

if TYPE_CHECKING:
    from components.predictor import Predictor

SearchSpace = dict[str, FloatRange | IntRange | Choice]
TrialState = Literal["complete", "pruned", "failed"]

_OPTUNA_SCALARS = (type(None), bool, int, float, str)


def default_space(arch: str) -> SearchSpace:
    """The search space used when a pipeline declares no `tune.space`.

    Learning rate and weight decay span decades, so they are drawn log-uniformly; widths are
    a few sensible shapes rather than free integers per layer (which TPE learns slowly).
    """
    space: SearchSpace = {
        "train.lr": FloatRange(type="float", low=1e-4, high=3e-2, log=True),
        "train.weight_decay": FloatRange(type="float", low=1e-6, high=1e-2, log=True),
        "train.dropout": FloatRange(type="float", low=0.0, high=0.5),
    }
    if arch == "mlp":
        space["train.batch_size"] = Choice(type="categorical", choices=[32, 64, 128, 256])
        space["train.hidden"] = Choice(
            type="categorical", choices=[[32], [64], [64, 32], [128, 64], [128, 64, 32], [256, 128]]
        )
    else:
        space["train.batch_size"] = Choice(type="categorical", choices=[32, 64, 128])
        space["train.channels"] = Choice(type="categorical", choices=[[16, 32], [32, 64], [16, 32, 64], [32, 64, 128]])
    return space


def search_space(config: PipelineConfig) -> SearchSpace:
    """The pipeline's declared `tune.space`, else the default space of its architecture."""
    return dict(config.tune.space) if config.tune.space is not None else default_space(config.train.arch)


def _labels(choice: Choice) -> list[Any]:
    # Optuna's categorical choices must be None, bool, int, float or str: lists (layer widths)
    # go in as their JSON text and come back out through `_decode`.
    if all(isinstance(c, _OPTUNA_SCALARS) for c in choice.choices):
        return list(choice.choices)
    return [json.dumps(c) for c in choice.choices]


def _decode(choice: Choice, label: Any) -> Any:
    return choice.choices[_labels(choice).index(label)]


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw one value per key of `space` for this trial (dotted key -> value)."""
    params: dict[str, Any] = {}
    for key, param in space.items():
        if isinstance(param, FloatRange):
            params[key] = trial.suggest_float(key, param.low, param.high, log=param.log)
        elif isinstance(param, IntRange):
            params[key] = trial.suggest_int(key, param.low, param.high, step=param.step, log=param.log)
        else:
            params[key] = _decode(param, trial.suggest_categorical(key, _labels(param)))
    return params


def current_values(config: PipelineConfig, space: SearchSpace) -> dict[str, Any]:
    """The pipeline's present value of each key of the space."""
    tree = config.model_dump(mode="json")
    values = {}
    for key in space:
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def trial_config(config: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """The pipeline with a trial's values, and `train.max_epochs` capped by `tune.max_epochs`."""
    values = dict(params)
    if config.tune.max_epochs is not None:
        values.setdefault("train.max_epochs", min(config.train.max_epochs, config.tune.max_epochs))
    return build_config(config.model_dump(mode="json"), origin=f"{config.name}: a trial's values", values=values)


def make_sampler(config: PipelineConfig) -> optuna.samplers.BaseSampler:
    """TPE seeded with `train.seed`: the same config draws the same trials."""
    return optuna.samplers.TPESampler(seed=config.train.seed, n_startup_trials=config.tune.sampler_startup_trials)


def make_pruner(config: PipelineConfig) -> optuna.pruners.BasePruner:
    """Median pruning (per epoch, after a warmup), or none."""
    tune = config.tune
    if tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
    )


@dataclass
class TrialOutcome:
    """How one trial went.

    Attributes:
        number: Optuna's trial number (0-based).
        state: complete, pruned or failed (training diverged).
        params: The trial's values, by dotted key.
        value: The objective: for a complete trial the metric at its best epoch; for a pruned
            one the best it reached before it was stopped; None for a failed one.
        epochs: Epochs trained.
        detail: Why it was pruned or failed.
        baseline: Whether it replayed the pipeline's current settings.
    """

    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None
    epochs: int
    detail: str = ""
    baseline: bool = False


@dataclass
class TuneResult:
    """Every trial of a search, and the best complete one.

    Attributes:
        pipeline: The pipeline tuned.
        metric: val_loss (minimised) or val_accuracy (maximised), on the validation split.
        trials: In the order they ran.
        notes: What a reader should know (baseline replayed or not, ...).
    """

    pipeline: str
    metric: str
    trials: list[TrialOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """Whether a lower or a higher metric is better."""
        return direction(self.metric)

    @property
    def best(self) -> TrialOutcome | None:
        """The best complete trial (the earliest among equals), or None when none completed."""
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        if not done:
            return None
        sign = 1.0 if self.direction == "minimize" else -1.0
        return min(done, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]

    @property
    def baseline(self) -> TrialOutcome | None:
        """The trial that replayed the current settings, if one ran."""
        return next((t for t in self.trials if t.baseline), None)

    def counts(self) -> dict[str, int]:
        """Trials per state."""
        return {state: sum(t.state == state for t in self.trials) for state in ("complete", "pruned", "failed")}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able) for artifacts and `--json`."""
        best = self.best
        return {
            "pipeline": self.pipeline,
            "metric": self.metric,
            "direction": self.direction,
            "best": None if best is None else asdict(best),
            "counts": self.counts(),
            "trials": [asdict(t) for t in self.trials],
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        """A table of the trials, best first line (for Prefect and MLflow)."""
        keys = sorted({k for t in self.trials for k in t.params})
        best = self.best
        lines = [
            f"### Tuning {self.pipeline}: {len(self.trials)} trials, {self.metric} on the validation split",
            "",
            "| trial | state | " + " | ".join([self.metric, "epochs", *keys]) + " |",
            "|" + " --- |" * (4 + len(keys)),
        ]
        for t in self.trials:
            mark = (" (best)" if best is not None and t.number == best.number else "") + (
                " (baseline)" if t.baseline else ""
            )
            value = "-" if t.value is None else f"{t.value:.4f}"
            cells = [
                str(t.number),
                f"{t.state}{mark}",
                value,
                str(t.epochs),
                *(format_value(t.params.get(k)) for k in keys),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join([*lines, "", *(f"- {note}" for note in self.notes)])


@dataclass
class TuneSummary:
    """What one `deepgate tune` run reports: the search, its lineage, and the file it wrote.

    Attributes:
        result: The trials and the best one.
        data_version: DVC md5 of the dataset searched on.
        rows: Rows (or images) in the dataset.
        split: Rows per split (`test` is never used by the search).
        mlflow_run_id: The parent run; each trial is a run nested under it.
        overrides_path: The override file written, or None when no trial completed.
        notes: What the user should know (a suite built in memory, a baseline skipped, ...).
    """

    result: TuneResult
    data_version: str | None = None
    rows: int | None = None
    split: dict[str, int] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    overrides_path: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        return {
            **self.result.to_dict(),
            "data_version": self.data_version,
            "rows": self.rows,
            "split": dict(self.split),
            "mlflow_run_id": self.mlflow_run_id,
            "overrides_path": self.overrides_path,
            "notes": [*self.result.notes, *self.notes],
        }


def direction(metric: str) -> Literal["minimize", "maximize"]:
    """Optuna's direction for a metric."""
    return "minimize" if metric.endswith("loss") else "maximize"


def format_value(value: Any) -> str:
    """A hyperparameter value, short: 3 significant digits for floats."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


class TuneCallbacks:
    """What the search tells its caller; override the methods you need (all no-ops here)."""

    def trial_started(self, number: int, params: dict[str, Any], config: PipelineConfig) -> None:
        """A trial is about to train with `params` (its full config is `config`)."""

    def epoch_ended(self, number: int, record: dict[str, Any]) -> None:
        """A trial finished an epoch (`record` is train_model's history row)."""

    def trial_ended(self, outcome: TrialOutcome) -> None:
        """A trial completed, was pruned or failed."""


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    # Optuna logs a line per trial on its own; ours carry the params and the state instead.
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _best_reported(values: list[float], metric: str) -> float | None:
    if not values:
        return None
    return min(values) if direction(metric) == "minimize" else max(values)


class _Objective:
    """Optuna's objective: fit one trial's config on train, score on validation, maybe prune."""

    def __init__(
        self,
        config: PipelineConfig,
        dataset: Dataset,
        split: SplitIndices,
        space: SearchSpace,
        callbacks: TuneCallbacks,
        result: TuneResult,
        base: Predictor | None,
    ) -> None:
        self.config, self.dataset, self.space, self.base = config, dataset, space, base
        # Only the rows a trial may learn from or be judged on: the test rows are not even passed on.
        self.split = SplitIndices(split.train, split.val, split.test[:0])
        self.callbacks, self.result = callbacks, result
        self.metric = config.tune.metric

    def __call__(self, trial: optuna.Trial) -> float:
        baseline = bool(trial.user_attrs.get("baseline"))
        # The baseline suggests nothing: its values need not lie in the space (weight_decay 0
        # under a log range, widths that are no choice), and a trial without params leaves
        # TPE's model of the space alone while its epochs still inform the pruner's median.
        params = current_values(self.config, self.space) if baseline else suggest(trial, self.space)
        config = trial_config(self.config, params)
        self.callbacks.trial_started(trial.number, params, config)
        reported: list[float] = []

        def on_epoch_end(record: dict[str, Any]) -> None:
            self.callbacks.epoch_ended(trial.number, record)
            value, epoch = float(record[self.metric]), int(record["epoch"])
            reported.append(value)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"after epoch {epoch + 1}, {self.metric} {value:.4f}")

        def outcome(state: TrialState, value: float | None, epochs: int, detail: str = "") -> TrialOutcome:
            return TrialOutcome(trial.number, state, params, value, epochs, detail, baseline)

        try:
            candidate = fit_candidate(config, self.dataset, self.split, on_epoch_end=on_epoch_end, base=self.base)
        except optuna.TrialPruned as pruned:
            self._end(outcome("pruned", _best_reported(reported, self.metric), len(reported), str(pruned)))
            raise
        except TrainingDiverged as error:
            self._end(outcome("failed", None, len(reported), f"diverged: {error}"))
            raise
        history = candidate.result.history
        value = float(history[candidate.result.best_epoch][self.metric])
        self._end(outcome("complete", value, len(history)))
        return value

    def _end(self, outcome: TrialOutcome) -> None:
        self.result.trials.append(outcome)
        self.callbacks.trial_ended(outcome)


def tune_hyperparameters(
    config: PipelineConfig,
    dataset: Dataset,
    split: SplitIndices,
    *,
    trials: int | None = None,
    callbacks: TuneCallbacks | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    base: Predictor | None = None,
) -> TuneResult:
    """Search the pipeline's hyperparameters; return every trial and the best.

    Trials run one after the other in this process (no worker processes: the flow's process
    is threaded, and forking it is not safe). A trial whose training diverges is recorded as
    failed and the search goes on.

    Args:
        config: The pipeline, with its `tune:` section.
        dataset: The validated dataset.
        split: The split the pipeline trains with; only `train` and `val` rows are used.
        trials: Number of trials (default: `tune.trials`).
        callbacks: Told of each trial's start, epochs and end.
        pruner: Replaces the configured pruner (tests force pruning with one).
        base: The model every trial starts from when `train.init` is transfer or warm_start
            (the one retraining would start from), as in :func:`~components.modeling.fit_candidate`.

    Returns:
        The trials in order, the best complete one (`best`), and notes.
    """
    callbacks = callbacks or TuneCallbacks()
    space = search_space(config)
    result = TuneResult(config.name, config.tune.metric)
    with _quiet_optuna():
        study = optuna.create_study(
            direction=direction(config.tune.metric),
            sampler=make_sampler(config),
            pruner=pruner if pruner is not None else make_pruner(config),
            study_name=f"deepgate-{config.name}",
        )
        if config.tune.baseline:
            study.enqueue_trial({}, user_attrs={"baseline": True})
            result.notes.append("trial 0 ran the current settings (the baseline)")
        objective = _Objective(config, dataset, split, space, callbacks, result, base)
        study.optimize(objective, n_trials=trials or config.tune.trials, n_jobs=1, catch=(TrainingDiverged,))
    return result


def overrides_yaml(result: TuneResult, header: list[str]) -> str:
    """The best trial's values as an override file for `deepgate run --overrides FILE`.

    Values keep their full precision, so that retraining with the file reproduces the trial's
    settings exactly.

    Raises:
        ValueError: No trial completed, so there is nothing to write.
    """
    best = result.best
    if best is None:
        raise ValueError(f"no trial of {result.pipeline} completed: nothing to write")
    body = yaml.safe_dump(best.params, sort_keys=True, default_flow_style=None)
    comments = "".join(f"# {line}\n" for line in header)
    return comments + body


def describe(outcome: TrialOutcome, metric: str, total: int) -> str:
    """One progress line for a finished trial."""
    params = "  ".join(f"{k.removeprefix('train.')}={format_value(v)}" for k, v in outcome.params.items())
    value = "-" if outcome.value is None else f"{outcome.value:.4f}"
    state = (
        outcome.state + (" (baseline)" if outcome.baseline else "") + (f": {outcome.detail}" if outcome.detail else "")
    )
    return f"[{outcome.number + 1}/{total}] trial {outcome.number}: {metric} {value}  {state}  [{params}]"
