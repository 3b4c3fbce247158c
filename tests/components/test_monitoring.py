"""Drift monitoring on synthetic prediction logs: stable, a shifted feature, shifted answers, too few rows."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, DriftGate, MonitorConfig
from components.dataset import Dataset
from components.monitoring import compare_with_training, read_prediction_log
from components.prediction_log import INSERT, SCHEMA

DATA = DataConfig(source="csv:people.csv", target="label")
GATE = DriftGate()  # feature_action "warn" for the retraining gate: monitoring counts drift anyway
MONITOR = MonitorConfig(min_rows=200)
N = 600


def _reference(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "age": rng.normal(30, 5, N).round(1),
            "colour": rng.choice(["Black", "White"], N, p=[0.3, 0.7]),
            "label": rng.choice(["Yes", "No"], N, p=[0.8, 0.2]),
        }
    )
    return Dataset("tabular", table, "label")


def _write_log(path: Path, rows: pd.DataFrame, predictions: list[str], ts: float | None = None) -> None:
    connection = sqlite3.connect(path)
    connection.execute(SCHEMA)
    now = time.time() if ts is None else ts
    records = rows.to_dict(orient="records")
    connection.executemany(
        INSERT,
        [(now, "3", json.dumps(r), p, json.dumps([0.5, 0.5])) for r, p in zip(records, predictions, strict=True)],
    )
    connection.commit()
    connection.close()


def _production(seed: int, *, age_shift: float = 0.0, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"age": rng.normal(30 + age_shift, 5, n).round(1), "colour": rng.choice(["Black", "White"], n, p=[0.3, 0.7])}
    )


def _answers(seed: int, yes: float, n: int = N) -> list[str]:
    return list(np.random.default_rng(seed).choice(["Yes", "No"], n, p=[yes, 1 - yes]))


def _compare(tmp_path: Path, rows: pd.DataFrame, predictions: list[str], monitor: MonitorConfig = MONITOR):
    path = tmp_path / "log.sqlite"
    _write_log(path, rows, predictions)
    logged = read_prediction_log(path, limit=monitor.max_rows)
    return compare_with_training(_reference(), logged, DATA, GATE, monitor, pipeline="people", champion="3")


def test_production_like_the_training_data_is_stable(tmp_path: Path) -> None:
    result = _compare(tmp_path, _production(1), _answers(1, 0.8))

    assert result.verdict == "stable", result.to_markdown()
    assert not result.drifted
    assert result.report.figures["logged_rows"] == N
    assert {"psi.age", "psi.colour", "prediction_psi"} <= set(result.report.figures)


def test_a_shifted_feature_is_drift_naming_the_feature(tmp_path: Path) -> None:
    result = _compare(tmp_path, _production(1, age_shift=10), _answers(1, 0.8))

    assert result.verdict == "drifted"
    assert [c.name for c in result.drifted_checks()] == ["drift(age)"]
    assert "age" in result.headline() and "DRIFTED" in result.headline()
    assert result.to_dict()["drifted"] == ["drift(age)"]
    assert "**drifted**" in result.to_markdown()


def test_shifted_predictions_with_stable_inputs_are_drift(tmp_path: Path) -> None:
    result = _compare(tmp_path, _production(1), _answers(1, 0.3))

    assert result.verdict == "drifted"
    [check] = result.drifted_checks()
    assert check.name == "prediction_drift"
    assert "Yes" in check.detail or "No" in check.detail


def test_too_few_logged_rows_is_reported_not_passed(tmp_path: Path) -> None:
    result = _compare(tmp_path, _production(1, age_shift=10, n=50), _answers(1, 0.8, n=50))

    assert result.verdict == "insufficient_data"
    assert not result.drifted
    assert "50 logged rows < 200" in result.headline()
    assert result.to_dict()["verdict"] == "insufficient_data"


def test_no_champion_data_is_no_reference(tmp_path: Path) -> None:
    logged = read_prediction_log(tmp_path / "missing.sqlite")
    result = compare_with_training(None, logged, DATA, GATE, MONITOR, pipeline="people", champion=None)

    assert len(logged) == 0
    assert result.verdict == "no_reference" and not result.drifted


def test_the_window_keeps_the_latest_rows_within_the_time_limit(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    _write_log(path, _production(1, n=5), _answers(1, 0.8, n=5), ts=1_000.0)
    _write_log(path, _production(2, n=5), _answers(2, 0.8, n=5), ts=2_000.0)

    assert len(read_prediction_log(path, since=1_500.0)) == 5
    latest = read_prediction_log(path, limit=3)
    assert len(latest) == 3 and latest.ts == [2_000.0] * 3
    assert set(latest.inputs[0]) == {"age", "colour"}


@pytest.mark.parametrize("field", ["min_rows", "max_rows", "prediction_psi_threshold"])
def test_monitor_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MonitorConfig(**{field: 0})
