"""The hyperparameter search: reproducible, validation-only, pruning, and its override file.

Searches run on 200 inline rows with 3 epochs per trial (a fraction of a second each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from components import tuning
from components.config import ConfigError, PipelineConfig, build_config, load_pipeline, read_overrides
from components.dataset import Dataset
from components.split import SplitIndices

ROWS = 200


def _data() -> tuple[Dataset, SplitIndices]:
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=ROWS), rng.normal(size=ROWS)
    table = pd.DataFrame({"x": x, "z": z, "y": np.where(x + 0.3 * z > 0, "yes", "no")})
    rows = np.arange(ROWS)
    return Dataset("tabular", table, "y"), SplitIndices(rows[:120], rows[120:160], rows[160:])


def _raw(**tune: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "data": {"source": "csv:unused.csv", "target": "y"},
        "train": {"arch": "mlp", "hidden": [8], "max_epochs": 3, "lr": 0.01, "batch_size": 32, "seed": 0},
        "tune": {"trials": 4, "sampler_startup_trials": 2, "pruner": "none", **tune},
    }


def _config(**tune: Any) -> PipelineConfig:
    return build_config(_raw(**tune))


class Recorder(tuning.TuneCallbacks):
    """Every event the search reports, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, Any]] = []

    def trial_started(self, number: int, params: dict[str, Any], config: PipelineConfig) -> None:
        self.events.append(("start", number, config.train.max_epochs))

    def epoch_ended(self, number: int, record: dict[str, Any]) -> None:
        self.events.append(("epoch", number, record["epoch"]))

    def trial_ended(self, outcome: tuning.TrialOutcome) -> None:
        self.events.append(("end", outcome.number, outcome.state))


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes one trial, by number, once it has reported `after` epochs: pruning on cue."""

    def __init__(self, number: int, after: int = 1) -> None:
        self.number, self.after = number, after

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == self.number and len(trial.intermediate_values) >= self.after


@pytest.fixture(scope="module")
def searched() -> tuning.TuneResult:
    """One default search (4 trials, no pruning), shared by the tests that only read it."""
    dataset, split = _data()
    return tuning.tune_hyperparameters(_config(), dataset, split)


def test_a_search_is_reproducible_learns_and_never_needs_the_test_rows(searched: tuning.TuneResult) -> None:
    dataset, split = _data()
    first = searched
    # The same search with no test rows at all: every trial must come out the same.
    no_test = SplitIndices(split.train, split.val, split.test[:0])
    again = tuning.tune_hyperparameters(_config(), dataset, no_test)

    assert [(t.params, t.value) for t in first.trials] == [(t.params, t.value) for t in again.trials]
    assert len(first.trials) == 4 and first.counts() == {"complete": 4, "pruned": 0, "failed": 0}
    assert len({str(t.params) for t in first.trials}) == 4  # the sampler explores
    best, baseline = first.best, first.baseline
    assert best is not None and baseline is not None and baseline.number == 0
    # Trial 0 replays the current settings, even those outside the default space (weight decay
    # 0 under a log range, one hidden layer of 8 that is no choice).
    assert baseline.params == {
        "train.lr": 0.01,
        "train.weight_decay": 0.0,
        "train.dropout": 0.1,
        "train.batch_size": 32,
        "train.hidden": [8],
    }
    assert best.value is not None and baseline.value is not None and best.value <= baseline.value
    assert best.value < 0.6  # learnt something: a coin flip has a loss of 0.69


def test_the_callbacks_hear_every_trial_and_epoch_with_the_capped_epochs() -> None:
    dataset, split = _data()
    recorder = Recorder()
    config = build_config(_raw(max_epochs=2) | {"train": {**_raw()["train"], "max_epochs": 10, "patience": 10}})
    tuning.tune_hyperparameters(config, dataset, split, trials=2, callbacks=recorder)

    expected = []
    for number in (0, 1):
        expected += [("start", number, 2), ("epoch", number, 0), ("epoch", number, 1), ("end", number, "complete")]
    assert recorder.events == expected


def test_a_pruned_trial_is_recorded_as_pruned_and_the_search_goes_on() -> None:
    dataset, split = _data()
    recorder = Recorder()
    result = tuning.tune_hyperparameters(_config(), dataset, split, callbacks=recorder, pruner=PruneTrial(2))

    states = [t.state for t in result.trials]
    assert states == ["complete", "complete", "pruned", "complete"]
    pruned = result.trials[2]
    assert pruned.epochs == 1 and pruned.value is not None
    assert "after epoch 1" in pruned.detail
    assert ("end", 2, "pruned") in recorder.events
    assert ("epoch", 2, 1) not in recorder.events  # stopped right after its first epoch
    assert result.best is not None and result.best.state == "complete"


def test_the_configured_median_pruner_stops_poor_trials() -> None:
    dataset, split = _data()
    config = _config(pruner="median", pruner_startup_trials=1, pruner_warmup_epochs=0)
    result = tuning.tune_hyperparameters(config, dataset, split)
    assert result.counts()["pruned"] >= 1
    assert all(t.epochs < 3 for t in result.trials if t.state == "pruned")


def test_a_diverging_trial_fails_and_the_search_goes_on() -> None:
    dataset, split = _data()
    space = {"train.max_grad_norm": {"type": "categorical", "choices": [1e-9, 1e4]}}
    result = tuning.tune_hyperparameters(_config(space=space), dataset, split, trials=4)

    by_norm = {t.params["train.max_grad_norm"]: t for t in result.trials}
    assert by_norm[1e-9].state == "failed" and "diverged" in by_norm[1e-9].detail
    assert by_norm[1e4].state == "complete"
    assert result.best is not None and result.best.params == {"train.max_grad_norm": 1e4}


def test_no_completed_trial_means_no_best_and_no_override_file() -> None:
    trials = [
        tuning.TrialOutcome(0, "pruned", {"train.lr": 0.1}, 0.7, 1, "after epoch 1, val_loss 0.7000"),
        tuning.TrialOutcome(1, "failed", {"train.lr": 9.0}, None, 0, "diverged: loss became nan"),
    ]
    result = tuning.TuneResult("tiny", "val_loss", trials)
    assert result.best is None
    with pytest.raises(ValueError, match="no trial of tiny completed"):
        tuning.overrides_yaml(result, [])


def test_the_override_file_loads_back_as_the_best_trials_values(tmp_path: Path, searched: tuning.TuneResult) -> None:
    result = searched
    best = result.best
    assert best is not None
    path = tmp_path / "tuned.yaml"
    path.write_text(tuning.overrides_yaml(result, ["deepgate tune tiny: a test"]))
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(_raw()))

    assert path.read_text().startswith("# deepgate tune tiny: a test\n")
    assert read_overrides(path) == best.params
    tuned = load_pipeline(config_file=pipeline, override_files=[path])
    assert tuned.train.lr == best.params["train.lr"]  # full precision: the trial's very value
    assert tuned.train.hidden == best.params["train.hidden"]
    assert tuned.train.max_epochs == 3  # the file holds the tuned values only
    # --set still wins over the file.
    assert load_pipeline(config_file=pipeline, override_files=[path], overrides=["train.lr=0.5"]).train.lr == 0.5


def test_an_override_file_may_be_a_nested_partial_config(tmp_path: Path) -> None:
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(_raw()))
    path = tmp_path / "partial.yaml"
    path.write_text("train:\n  lr: 0.002\n  schedule: {kind: constant}\ntrain.dropout: 0.3\n")
    config = load_pipeline(config_file=pipeline, override_files=[path])
    assert (config.train.lr, config.train.dropout, config.train.schedule.kind) == (0.002, 0.3, "constant")
    assert config.train.hidden == [8]  # sections merge: what the file does not name stays


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.dropout: 1.5\n", "train.dropout: Input should be less than 1"),
        ("train.lrr: 0.01\n", "train.lrr: Extra inputs are not permitted"),
        ("train.lr.value: 0.01\n", "train.lr.value: 'lr' is not a section"),
        ("- train.lr\n", "must hold a mapping"),
        ("train.lr: [0.01\n", "is not valid YAML"),
    ],
    ids=["out-of-range", "unknown-key", "not-a-section", "not-a-mapping", "bad-yaml"],
)
def test_a_bad_override_file_fails_naming_the_problem_and_the_file(tmp_path: Path, text: str, expected: str) -> None:
    pipeline = tmp_path / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(_raw()))
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_pipeline(config_file=pipeline, override_files=[path])
    assert expected in str(error.value)
    assert "bad.yaml" in str(error.value)


def test_a_missing_override_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"override file not found: .*nosuch\.yaml"):
        load_pipeline("arrests", params_path=Path("params.yaml"), override_files=[tmp_path / "nosuch.yaml"])


def test_default_spaces_follow_the_architecture() -> None:
    mlp, cnn = tuning.default_space("mlp"), tuning.default_space("cnn")
    assert {"train.lr", "train.weight_decay", "train.dropout", "train.batch_size", "train.hidden"} == set(mlp)
    assert "train.channels" in cnn and "train.hidden" not in cnn
    assert mlp["train.lr"].log and mlp["train.weight_decay"].log  # type: ignore[union-attr]
    # Every default value is a valid setting of a pipeline of that architecture.
    for arch, space in (("mlp", mlp), ("cnn", cnn)):
        data = {"source": "csv:x.csv" if arch == "mlp" else "npz:x.npz"}
        raw = {"name": "p", "data": data, "train": {"arch": arch}}
        build_config(raw | {"tune": {"space": {k: v.model_dump() for k, v in space.items()}}})


def test_a_declared_space_replaces_the_default_and_lists_round_trip() -> None:
    space = {
        "train.hidden": {"type": "categorical", "choices": [[4], [8, 4]]},
        "train.patience": {"type": "int", "low": 1, "high": 3},
    }
    config = _config(space=space)
    assert set(tuning.search_space(config)) == set(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [tuning.suggest(study.ask(), tuning.search_space(config)) for _ in range(8)]
    assert {str(d["train.hidden"]) for d in drawn} == {"[4]", "[8, 4]"}  # lists, not their JSON text
    assert all(1 <= d["train.patience"] <= 3 for d in drawn)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"train.seed": {"type": "int", "low": 0, "high": 3}}, "'train.seed' is not a hyperparameter"),
        ({"train.lrr": {"type": "float", "low": 0.1, "high": 1}}, "'train.lrr' is not a setting of train:"),
        ({"split.seed": {"type": "int", "low": 0, "high": 3}}, "only train.* settings can be tuned"),
        ({"train.channels": {"type": "categorical", "choices": [[8]]}}, "arch 'mlp' does not use it"),
        ({"train.dropout": {"type": "float", "low": 0, "high": 1.0}}, "1.0 is not a valid train.dropout"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "low (0.1) must be below high (0.01)"),
        ({"train.lr": {"type": "normal", "low": 0.1, "high": 0.01}}, "does not match any of the expected tags"),
        ({}, "an empty space has nothing to tune"),
    ],
    ids=["seed", "unknown", "not-train", "wrong-arch", "out-of-range", "log-at-0", "reversed", "bad-type", "empty"],
)
def test_a_bad_search_space_fails_at_load_naming_the_key(space: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        _config(space=space)
    assert expected in str(error.value)


def test_the_tune_section_leaves_the_config_hash_alone() -> None:
    assert _config(trials=50, metric="val_accuracy").config_hash() == _config().config_hash()


def test_transfer_and_warm_start_trials_start_from_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, split = _data()
    base = object()  # stands in for the Predictor retraining would start from
    seen: list[object] = []
    real_fit = tuning.fit_candidate

    def fit(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["base"])
        return real_fit(*args, **{**kwargs, "base": None})

    monkeypatch.setattr(tuning, "fit_candidate", fit)
    tuning.tune_hyperparameters(_config(), dataset, split, trials=2, base=base)  # type: ignore[arg-type]
    assert seen == [base, base]
