"""Evaluation metrics, report round-trip and figures, checked against hand-computed values."""

from __future__ import annotations

import io
import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from components.evaluation import (
    EvalReport,
    bootstrap_intervals,
    calibration_bins,
    evaluate_predictions,
    expected_calibration_error,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_pr_curve,
    plot_reliability,
    plot_roc_curve,
)

CLASSES = ["a", "b", "c"]
# 8 rows, 3 classes. Predictions by row: true 0 -> 0,0,1; true 1 -> 1,1,2; true 2 -> 2,0.
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 2, 0])


def _proba(pred: np.ndarray, k: int = 3, top: float = 0.6) -> np.ndarray:
    """Probability `top` on the predicted class, the rest shared equally."""
    rest = (1 - top) / (k - 1)
    proba = np.full((len(pred), k), rest)
    proba[np.arange(len(pred)), pred] = top
    return proba


def _png_bytes(fig) -> int:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return len(buffer.getvalue())


@pytest.fixture
def report() -> EvalReport:
    return evaluate_predictions(Y_TRUE, _proba(Y_PRED), CLASSES)


def test_accuracy_f1_confusion_by_hand(report: EvalReport) -> None:
    # 5 of 8 on the diagonal.
    assert report.n == 8
    assert report.accuracy == pytest.approx(5 / 8)
    assert report.confusion == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    # Column sums (predicted) 3, 3, 2; diagonal 2, 2, 1; row sums (support) 3, 3, 2.
    # F1: a = 2/3, b = 2/3, c = 1/2 -> macro = (2/3 + 2/3 + 1/2) / 3 = 11/18.
    assert report.macro_f1 == pytest.approx(11 / 18)
    by_class = {row["class"]: row for row in report.per_class}
    assert by_class["a"]["precision"] == pytest.approx(2 / 3)
    assert by_class["c"]["recall"] == pytest.approx(1 / 2)
    assert [row["support"] for row in report.per_class] == [3, 3, 2]


def test_log_loss_and_single_bin_ece(report: EvalReport) -> None:
    # 5 rows give the true class 0.6, 3 rows give it 0.2.
    assert report.log_loss == pytest.approx((5 * -math.log(0.6) + 3 * -math.log(0.2)) / 8)
    # All confidences are 0.6 (one bin), accuracy 0.625: ECE = |0.625 - 0.6|.
    assert report.ece == pytest.approx(0.025)


def test_ece_four_predictions_by_hand() -> None:
    proba = np.array([[0.05, 0.95], [0.25, 0.75], [0.65, 0.35], [0.62, 0.38]])
    y_true = np.array([1, 0, 0, 1])  # right, wrong, right, wrong
    # Bins: (0.9,1]: acc 1, conf 0.95, n 1 -> 0.05 * 1/4 = 0.0125
    #       (0.7,0.8]: acc 0, conf 0.75, n 1 -> 0.75 * 1/4 = 0.1875
    #       (0.6,0.7]: acc 0.5, conf 0.635, n 2 -> 0.135 * 2/4 = 0.0675
    assert expected_calibration_error(y_true, proba) == pytest.approx(0.2675)
    assert [b["count"] for b in calibration_bins(y_true, proba)] == [2, 1, 1]


def test_bins_are_right_closed_at_float_edges() -> None:
    # 0.7 belongs to (0.6, 0.7] and 0.6 to (0.5, 0.6], despite 0.7 * 10 > 7 in floats.
    bins = calibration_bins(np.array([1, 0]), np.array([[0.3, 0.7], [0.6, 0.4]]))
    assert [b["lo"] for b in bins] == pytest.approx([0.5, 0.6])


def test_binary_roc_auc_by_hand() -> None:
    # Positive scores 0.35, 0.8 vs negative 0.1, 0.4: 3 of 4 pairs ranked right.
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    proba = np.column_stack([1 - p1, p1])
    result = evaluate_predictions(np.array([0, 0, 1, 1]), proba, ["no", "yes"])
    assert result.roc_auc == pytest.approx(0.75)
    assert result.metrics()["roc_auc"] == pytest.approx(0.75)


def test_roc_auc_none_when_one_class_only() -> None:
    proba = np.array([[0.2, 0.8], [0.4, 0.6]])
    result = evaluate_predictions(np.array([1, 1]), proba, ["no", "yes"])
    assert result.roc_auc is None
    assert "roc_auc" not in result.metrics()
    assert result.metrics()["accuracy"] == 1.0


def test_multiclass_roc_auc_is_one_vs_rest_macro() -> None:
    # A perfect ranking for every class gives AUC 1.
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    result = evaluate_predictions(np.array([0, 1, 2]), proba, CLASSES)
    assert result.roc_auc == pytest.approx(1.0)


def test_round_trip_through_json(report: EvalReport) -> None:
    restored = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert restored == report
    assert set(report.metrics()) == {"accuracy", "macro_f1", "roc_auc", "ece", "log_loss"}


def test_report_stored_before_intervals_still_loads(report: EvalReport) -> None:
    old = {k: v for k, v in report.to_dict().items() if k not in ("intervals", "average_precision", "positive_class")}
    restored = EvalReport.from_dict(old)
    assert restored.intervals == {} and restored.average_precision is None
    assert restored.accuracy == report.accuracy


def test_binary_average_precision_by_hand() -> None:
    # Scores by rank: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg). Precision at each recall
    # step: 1 at recall 0.5, 2/3 at recall 1 -> AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    result = evaluate_predictions(np.array([0, 0, 1, 1]), np.column_stack([1 - p1, p1]), ["no", "yes"])
    assert result.average_precision == pytest.approx(5 / 6)
    assert result.positive_class == "yes"
    assert result.metrics()["average_precision"] == pytest.approx(5 / 6)
    # Three "yes" and one "no": scores 0.9 (yes), 0.8 (yes), 0.5 (no), 0.4 (yes) give precision
    # 1, 1, 3/4 at recall 1/3, 2/3, 1 -> AP 11/12. With "no" positive, its only row ranks second
    # (0.5 after 0.6) -> AP 1/2.
    y_true, p1 = np.array([0, 1, 1, 1]), np.array([0.5, 0.9, 0.4, 0.8])
    proba = np.column_stack([1 - p1, p1])
    assert evaluate_predictions(y_true, proba, ["no", "yes"]).average_precision == pytest.approx(11 / 12)
    flipped = evaluate_predictions(y_true, proba, ["no", "yes"], positive=0)
    assert flipped.average_precision == pytest.approx(1 / 2)
    assert flipped.positive_class == "no"
    # The ROC-AUC does not depend on which class is positive.
    assert flipped.roc_auc == evaluate_predictions(y_true, proba, ["no", "yes"]).roc_auc


def test_intervals_cover_the_figures_and_are_reproducible() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 300)
    p1 = np.clip(0.3 * y_true + 0.7 * rng.random(300), 0, 1)
    proba = np.column_stack([1 - p1, p1])
    result = evaluate_predictions(y_true, proba, ["no", "yes"])
    assert set(result.intervals) == {"accuracy", "macro_f1", "roc_auc"}
    for metric, (low, high) in result.intervals.items():
        assert low <= getattr(result, metric) <= high
        assert 0.02 < high - low < 0.2  # 300 rows: a few points either side
    assert evaluate_predictions(y_true, proba, ["no", "yes"]).intervals == result.intervals
    assert bootstrap_intervals(y_true, proba, n_resamples=0) == {}
    assert "[" in result.to_markdown() and "bootstrap" in result.to_markdown()


def test_roc_and_pr_curves_render_for_binary_only() -> None:
    p1 = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    y_true = np.array([0, 0, 1, 1, 1, 0])
    proba = np.column_stack([1 - p1, p1])
    champion = np.column_stack([p1, 1 - p1])
    roc = plot_roc_curve(y_true, proba, champion_proba=champion)
    labels = [line.get_label() for line in roc.axes[0].get_lines()]
    assert labels[0].startswith("challenger (AUC") and labels[1].startswith("champion (AUC")
    assert _png_bytes(roc) > 1000
    assert _png_bytes(plot_pr_curve(y_true, proba, positive=0)) > 1000
    with pytest.raises(ValueError, match="binary"):
        plot_roc_curve(Y_TRUE, _proba(Y_PRED))
    with pytest.raises(ValueError, match="both classes"):
        plot_pr_curve(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]))


def test_markdown_holds_metrics_and_confusion(report: EvalReport) -> None:
    text = report.to_markdown()
    assert "0.6250" in text
    assert "| a | 2 | 1 | 0 |" in text


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(np.array([0, 1]), np.ones((2, 3)) / 3, ["x", "y"])
    with pytest.raises(ValueError, match="class indices"):
        evaluate_predictions(np.array([0, 2]), np.ones((2, 2)) / 2, ["x", "y"])


def test_figures_render_to_png(report: EvalReport) -> None:
    history = [
        {"epoch": 0, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5, "lr": 1e-3},
        {"epoch": 1, "train_loss": 0.7, "val_loss": 0.9, "val_accuracy": 0.6, "lr": 5e-4},
        {"epoch": 2, "train_loss": 0.5, "val_loss": None, "val_accuracy": None, "lr": 2e-4},
    ]
    curves = plot_learning_curves(history)
    assert len(curves.axes) == 3  # losses, accuracy, and the learning-rate twin axis
    assert _png_bytes(curves) > 1000
    assert _png_bytes(plot_confusion_matrix(report)) > 1000
    assert _png_bytes(plot_reliability(Y_TRUE, _proba(Y_PRED))) > 1000
