"""Drift monitoring: what the service was asked (its prediction log) against the champion's training data.

The serving prediction log (components/prediction_log.py) holds a sample of production inputs
and answers. Monitoring reads a window of it and asks two questions:

- Have the inputs moved? Each feature is compared with the champion's training data by
  :func:`components.drift.detect_drift`, with the same PSI and p-value limits as the retraining
  drift gate (`gates.drift`): a feature drifts only when both agree.
- Has what the model answers moved? The predicted-class shares against the training label
  shares, by PSI (`monitor.prediction_psi_threshold`). A shift here with stable inputs points
  at the labels' relation to the inputs having changed, or at a model that extrapolates.

Too few logged rows is a verdict of its own (`insufficient_data`), reported and never read as
"stable" nor as drift.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from components.config import DataConfig, DriftGate, MonitorConfig
from components.dataset import Dataset
from components.drift import detect_drift, psi_categorical
from components.gates import Check, GateReport

Verdict = Literal["stable", "drifted", "insufficient_data", "no_reference"]


def prediction_log_path(home: Path, pipeline: str) -> Path:
    """Where `deepgate serve --log-predictions` writes by default."""
    return home / ".deepgate" / "predictions" / f"{pipeline}.sqlite"


@dataclass(frozen=True)
class LoggedPredictions:
    """A window of the prediction log, oldest first.

    Attributes:
        inputs: One input per row, as logged: a row object (tables) or a nested list (images).
        predictions: The label answered for each row.
        versions: The model version that answered each row.
        ts: Unix seconds of each row.
    """

    inputs: list[Any]
    predictions: list[str]
    versions: list[str]
    ts: list[float]

    def __len__(self) -> int:
        return len(self.inputs)


def read_prediction_log(path: Path, *, since: float | None = None, limit: int = 10_000) -> LoggedPredictions:
    """The latest `limit` logged rows (logged at or after `since`, unix seconds), oldest first.

    The file is opened read-only: the service may be writing to it (WAL mode lets both run).
    A missing file or table is an empty log.
    """
    if not path.is_file():
        return LoggedPredictions([], [], [], [])
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT ts, version, input, prediction FROM predictions WHERE ts >= ? ORDER BY id DESC LIMIT ?",
            (since if since is not None else float("-inf"), limit),
        ).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return LoggedPredictions([], [], [], [])
        raise
    finally:
        connection.close()
    rows.reverse()
    return LoggedPredictions(
        inputs=[json.loads(r[2]) for r in rows],
        predictions=[str(r[3]) for r in rows],
        versions=[str(r[1]) for r in rows],
        ts=[float(r[0]) for r in rows],
    )


def window_start(monitor: MonitorConfig, now: float | None = None) -> float | None:
    """Unix seconds of the window's start (None: no time limit)."""
    if monitor.window_hours is None:
        return None
    return (time.time() if now is None else now) - monitor.window_hours * 3600


def logged_dataset(logged: LoggedPredictions, reference: Dataset) -> Dataset:
    """The logged inputs as a dataset shaped like the reference (no label column)."""
    if reference.modality == "image":
        images = np.asarray(logged.inputs, dtype="float64")
        return Dataset("image", pd.DataFrame(index=range(len(images))), reference.target, images)
    return Dataset("tabular", pd.DataFrame.from_records(logged.inputs), reference.target)


@dataclass
class MonitorReport:
    """The outcome of one monitoring pass.

    Attributes:
        pipeline: The pipeline monitored.
        verdict: `drifted` (retraining should start), `stable`, `insufficient_data` or
            `no_reference` (no champion with a data version to compare with).
        rows: Logged rows compared.
        champion: The champion version compared with, when there is one.
        report: The checks: `logged_rows`, one `drift(<feature>)` per feature and `prediction_drift`.
    """

    pipeline: str
    verdict: Verdict
    rows: int
    champion: str | None
    report: GateReport = field(default_factory=lambda: GateReport("monitor"))

    @property
    def drifted(self) -> bool:
        """True when the inputs or the predictions moved beyond the limits."""
        return self.verdict == "drifted"

    def drifted_checks(self) -> list[Check]:
        """The feature and prediction checks that found drift."""
        return [c for c in self.report.checks if not c.passed and c.name != "logged_rows"]

    def headline(self) -> str:
        """One line: the verdict and its key reason."""
        if self.verdict == "drifted":
            found = self.drifted_checks()
            more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
            return f"DRIFTED: {found[0].detail}{more}"
        if self.verdict == "stable":
            return f"stable over {self.rows} logged rows (champion v{self.champion})"
        return self.report.checks[0].detail if self.report.checks else self.verdict

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for MLflow artifacts and event payloads."""
        return {
            "pipeline": self.pipeline,
            "verdict": self.verdict,
            "rows": self.rows,
            "champion": self.champion,
            "drifted": [c.name for c in self.drifted_checks()],
            "report": self.report.to_dict(),
        }

    def to_markdown(self) -> str:
        """The verdict and the checks' table, for a Prefect artifact."""
        head = f"## Monitoring `{self.pipeline}`: **{self.verdict}**\n\n{self.headline()}\n\n"
        return head + self.report.to_markdown()


def _prediction_check(training_labels: pd.Series, predictions: list[str], threshold: float) -> Check:
    # Labels are compared as text: the log stores the answered label as text (e.g. "7").
    reference = training_labels.dropna().astype(str)
    current = pd.Series(predictions, dtype=object)
    value = psi_categorical(reference, current)
    r, c = reference.value_counts(normalize=True), current.value_counts(normalize=True)
    shares = pd.concat([r, c], axis=1, keys=["r", "c"]).fillna(0.0)
    top = (shares["c"] - shares["r"]).abs().idxmax()
    change = f"{top} {shares.at[top, 'r']:.0%} of training labels -> {shares.at[top, 'c']:.0%} of predictions"
    passed = value <= threshold
    relation = "<=" if passed else ">"
    verdict = "stable" if passed else "shifted"
    detail = f"predicted classes {verdict}: PSI {value:.2f} {relation} {threshold:g} ({change})"
    return Check("prediction_drift", passed, detail, value, threshold)


def compare_with_training(
    reference: Dataset | None,
    logged: LoggedPredictions,
    data: DataConfig,
    gate: DriftGate,
    monitor: MonitorConfig,
    *,
    pipeline: str,
    champion: str | None,
) -> MonitorReport:
    """Compare logged production inputs and predictions with the champion's training data.

    Args:
        reference: The data the champion was trained on (None: no champion, or no data version).
        logged: The window of the prediction log.
        data: The pipeline's data section (which columns are features).
        gate: The drift limits per feature (PSI and p-value floors); a drifting feature always
            counts here, whatever `gate.feature_action` says for the retraining gate.
        monitor: Row limits and the prediction PSI limit.
        pipeline: The pipeline's name, for the report.
        champion: The champion version compared with.

    Returns:
        The report: `drifted` when any feature or the predicted-class shares moved beyond the
        limits; `insufficient_data` below `monitor.min_rows` logged rows; `no_reference`
        without training data to compare with.
    """
    rows = len(logged)
    if reference is None:
        check = Check("reference", False, "no champion with a recorded data version: nothing to compare with", None)
        return MonitorReport(pipeline, "no_reference", rows, champion, GateReport("monitor", [check], applicable=False))
    enough = rows >= monitor.min_rows
    rows_check = Check(
        "logged_rows",
        enough,
        f"{rows} logged rows {'>=' if enough else '<'} {monitor.min_rows} needed"
        + ("" if enough else ": too few to judge drift (no verdict; serve with --log-predictions)"),
        float(rows),
        float(monitor.min_rows),
        severity="warn",
    )
    if not enough:
        return MonitorReport(pipeline, "insufficient_data", rows, champion, GateReport("monitor", [rows_check]))
    # Every drifting feature counts: monitoring's job is to notice, the retraining gates decide.
    strict = gate.model_copy(update={"feature_action": "fail", "label_action": "fail"})
    features = detect_drift(reference, logged_dataset(logged, reference), data, strict)
    prediction = _prediction_check(reference.labels, logged.predictions, monitor.prediction_psi_threshold)
    figures = {"logged_rows": float(rows), **features.figures, "prediction_psi": float(prediction.value or 0.0)}
    report = GateReport("monitor", [rows_check, *features.checks, prediction], figures=figures)
    return MonitorReport(pipeline, "stable" if report.passed else "drifted", rows, champion, report)
