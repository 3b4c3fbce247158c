"""`deepgate tune` as a user runs it: nested MLflow runs, a pruned trial, and an override file
that `deepgate run --overrides` trains with.

Commands run in-process through Typer's CliRunner, in a fresh workspace, on the session's one
Prefect server. The pipeline is the tiny CSV one (700 arrests rows, 3 epochs per trial).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from sklego.datasets import load_arrests
from toronto import toronto_raw

from components import names, tuning
from components.config import load_pipeline, read_overrides
from components.registry import Registry
from components.settings import load_settings

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]

TRIALS = 4


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes trial `number` after its first epoch: a pruned trial on cue, whatever the losses."""

    def __init__(self, number: int) -> None:
        self.number = number

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == self.number and len(trial.intermediate_values) >= 1


@pytest.fixture
def pipeline(workspace: Path) -> Path:
    """`incoming.csv` (700 arrests rows) and `good.yaml`, the tiny CSV pipeline."""
    load_arrests(as_frame=True).iloc[:700].to_csv(workspace / "incoming.csv", index=False)
    # A low accuracy floor: whether the retrained model is promoted is not what these tests check.
    raw = toronto_raw(**{"gates.evaluation.min_accuracy": 0.5})
    raw["tune"] = {"sampler_startup_trials": 2}
    path = workspace / "good.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_tune_nests_a_run_per_trial_and_run_trains_with_the_written_values(
    workspace: Path, pipeline: Path, deepgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tuning, "make_pruner", lambda config: PruneTrial(2))
    code, output = deepgate("tune", "--config", "good.yaml", "--trials", str(TRIALS))

    assert code == 0, output
    assert "deepgate tune toronto: val_loss on the validation split" in output
    assert f"{TRIALS} trials: 3 complete, 1 pruned, 0 failed" in output
    assert "wrote tuned/toronto.yaml; retrain with it: deepgate run --config good.yaml --overrides" in output

    registry = Registry(load_settings(workspace))
    experiment = registry.experiment_id("toronto")
    [parent] = registry.client.search_runs([experiment], f"tags.`{names.TAG_RUN_KIND}` = '{names.RUN_KIND_TUNE}'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.TAG_DATA_VERSION]  # tuned on a known data version
    trials = registry.client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(trials) == TRIALS
    by_number = {int(r.data.tags[names.TAG_TUNE_TRIAL]): r for r in trials}
    assert sorted(by_number) == list(range(TRIALS))
    states = {n: r.data.tags[names.TAG_TUNE_STATE] for n, r in by_number.items()}
    assert states == {0: "complete", 1: "complete", 2: "pruned", 3: "complete"}
    assert by_number[0].data.tags[names.TAG_TUNE_BASELINE] == "true"
    assert all(r.data.tags[names.TAG_RUN_KIND] == names.RUN_KIND_TUNE_TRIAL for r in trials)
    assert {"train.lr", "train.hidden", "train.batch_size", "train.max_epochs"} <= set(by_number[1].data.params)
    # Per-epoch metrics: three epochs for a complete trial, one for the pruned one.
    history = registry.client.get_metric_history
    assert [m.step for m in history(by_number[1].info.run_id, "val_loss")] == [0, 1, 2]
    assert [m.step for m in history(by_number[2].info.run_id, "val_loss")] == [0]

    # The file holds the best trial's values, and loads through the pipeline's own config.
    best = registry.load_run_json(parent.info.run_id, "tuning/trials.json")["best"]
    assert best["state"] == "complete"
    tuned_file = workspace / "tuned" / "toronto.yaml"
    assert read_overrides(tuned_file) == best["params"]
    assert parent.data.metrics["best.val_loss"] == pytest.approx(best["value"])
    config = load_pipeline(config_file=pipeline, override_files=[tuned_file])
    assert config.train.lr == best["params"]["train.lr"]

    # `deepgate run --overrides` trains with exactly those values.
    code, output = deepgate("run", "--config", "good.yaml", "--overrides", "tuned/toronto.yaml")
    assert code == 0, output
    [retrain] = registry.client.search_runs([experiment], "attributes.run_name LIKE 'retrain-%'")
    params = retrain.data.params
    for key, value in best["params"].items():
        assert params[key] == str(value), key


def test_a_bad_override_file_exits_1_naming_the_field_and_the_file(workspace: Path, pipeline: Path, deepgate) -> None:
    (workspace / "bad.yaml").write_text("train.dropout: 1.5\n")
    for command in ("run", "tune"):
        code, output = deepgate(command, "--config", "good.yaml", "--overrides", "bad.yaml")
        assert code == 1, output
        assert "train.dropout: Input should be less than 1" in output
        assert "bad.yaml" in output
    assert not (workspace / "mlflow").exists()  # refused before anything ran


def test_a_bad_search_space_exits_1_before_anything_runs(workspace: Path, pipeline: Path, deepgate) -> None:
    code, output = deepgate(
        "tune", "--config", "good.yaml", "--set", "tune.space={train.seed: {type: int, low: 0, high: 3}}"
    )
    assert code == 1, output
    assert "'train.seed' is not a hyperparameter" in output
    assert not (workspace / "mlflow").exists()


def test_tune_prints_plain_json_and_an_unreadable_file_exits_2(
    workspace: Path, pipeline: Path, deepgate, tmp_path: Path
) -> None:
    out = tmp_path / "elsewhere.yaml"
    code, output = deepgate("tune", "--config", "good.yaml", "--trials", "2", "--out", str(out), "--json")
    assert code == 0, output
    report = json.loads(output[output.index("{") :])
    assert report["overrides_path"] == str(out) and out.is_file()
    assert [t["number"] for t in report["trials"]] == [0, 1]
    assert report["trials"][0]["baseline"] is True
    assert report["metric"] == "val_loss" and report["split"]["val"] > 0

    (workspace / "incoming.csv").write_text("")
    code, output = deepgate("tune", "--config", "good.yaml", "--trials", "2")
    assert code == 2, output
    assert "gate 'ingest' stopped the search" in output
    assert "no trial ran" in output
    registry = Registry(load_settings(workspace))
    kind = f"tags.`{names.TAG_RUN_KIND}` = '{names.RUN_KIND_TUNE}'"
    stopped, _ = registry.client.search_runs([registry.experiment_id("toronto")], kind, order_by=["start_time DESC"])
    assert (stopped.info.status, stopped.data.tags["deepgate.outcome"]) == ("FAILED", "stopped")
    nested = f"tags.`mlflow.parentRunId` = '{stopped.info.run_id}'"
    assert registry.client.search_runs([registry.experiment_id("toronto")], nested) == []
