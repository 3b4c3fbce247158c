"""Evaluation of a classifier's predicted probabilities: metrics, intervals, report and figures.

:func:`evaluate_predictions` turns labels and class probabilities into an :class:`EvalReport`
that renders itself (dict for MLflow JSON, markdown for Prefect) and reloads from its dict, so a
champion's stored report can be compared with a challenger's. Its 95% intervals come from a
seeded percentile bootstrap of the rows, vectorised over the resamples
(:mod:`components.bootstrap`).

The plots use matplotlib's object-oriented API (``Figure()``, never pyplot), so no global
backend state is touched and they work headless; callers save them with ``fig.savefig``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from components.bootstrap import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    accuracy_macro_f1,
    bootstrap,
    confusion_stack,
    percentile_interval,
    resampled_roc_auc,
)

N_BINS = 10
BOOTSTRAP_RESAMPLES = RESAMPLES
BOOTSTRAP_SEED = SEED


@dataclass
class EvalReport:
    """Metrics of one model on one labelled set.

    Attributes:
        n: Number of rows evaluated.
        accuracy: Share of rows whose arg-max class is the true class.
        macro_f1: Unweighted mean F1 over the classes present in labels or predictions.
        roc_auc: Binary: AUC of the positive (index 1) class. Multiclass: one-vs-rest macro
            AUC. None when it cannot be computed (e.g. a class absent from the labels).
        ece: Expected calibration error, 10 equal-width bins of the max probability.
        log_loss: Mean negative log-likelihood of the true class.
        confusion: Counts, rows = true class, columns = predicted class, in `classes` order.
        classes: Class names, index i = class index i.
        per_class: One dict per class: class, precision, recall, f1, support.
        average_precision: Binary: area under the precision-recall curve of the positive
            class (sklearn's average precision). None otherwise.
        positive_class: Binary: the class treated as positive for ROC and PR; None otherwise.
        intervals: Metric -> [low, high], a 95% percentile bootstrap interval (accuracy,
            macro_f1, and roc_auc for binary tasks). Empty when no resampling was asked for.
    """

    n: int
    accuracy: float
    macro_f1: float
    roc_auc: float | None
    ece: float
    log_loss: float
    confusion: list[list[int]]
    classes: list[str]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    average_precision: float | None = None
    positive_class: str | None = None
    intervals: dict[str, list[float]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow; `roc_auc` and `average_precision` are left out when None."""
        figures = {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "log_loss": self.log_loss,
        }
        if self.roc_auc is not None:
            figures["roc_auc"] = self.roc_auc
        if self.average_precision is not None:
            figures["average_precision"] = self.average_precision
        return figures

    def interval(self, metric: str) -> str:
        """`[low, high]` of a metric's 95% interval, or an empty string when there is none."""
        bounds = self.intervals.get(metric)
        return "" if not bounds else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. a champion's stored JSON)."""
        # Reports stored before intervals and average precision existed still load.
        roc_auc = data.get("roc_auc")
        average_precision = data.get("average_precision")
        return cls(
            n=int(data["n"]),
            accuracy=float(data["accuracy"]),
            macro_f1=float(data["macro_f1"]),
            roc_auc=None if roc_auc is None else float(roc_auc),
            ece=float(data["ece"]),
            log_loss=float(data["log_loss"]),
            confusion=[[int(v) for v in row] for row in data["confusion"]],
            classes=[str(c) for c in data["classes"]],
            per_class=[dict(row) for row in data.get("per_class", [])],
            average_precision=None if average_precision is None else float(average_precision),
            positive_class=data.get("positive_class"),
            intervals={k: [float(v) for v in bounds] for k, bounds in data.get("intervals", {}).items()},
        )

    def to_markdown(self) -> str:
        """Headline metrics (with 95% intervals), per-class table and confusion matrix as markdown."""
        auc = "n/a" if self.roc_auc is None else f"{self.roc_auc:.4f} {self.interval('roc_auc')}".strip()
        ap = "n/a" if self.average_precision is None else f"{self.average_precision:.4f}"
        accuracy = f"{self.accuracy:.4f} {self.interval('accuracy')}".strip()
        macro_f1 = f"{self.macro_f1:.4f} {self.interval('macro_f1')}".strip()
        lines = [
            f"### Evaluation on {self.n} rows",
            "",
            "| accuracy | macro F1 | ROC AUC | average precision | ECE | log loss |",
            "|---|---|---|---|---|---|",
            f"| {accuracy} | {macro_f1} | {auc} | {ap} | {self.ece:.4f} | {self.log_loss:.4f} |",
            "",
        ]
        if self.intervals:
            lines += ["Brackets: 95% percentile bootstrap intervals (rows resampled).", ""]
        lines += [
            "| class | precision | recall | f1 | support |",
            "|---|---|---|---|---|",
        ]
        for row in self.per_class:
            lines.append(
                f"| {row['class']} | {row['precision']:.4f} | {row['recall']:.4f} "
                f"| {row['f1']:.4f} | {row['support']} |"
            )
        lines += ["", "Confusion matrix (rows = true, columns = predicted):", ""]
        lines.append("| true \\ pred | " + " | ".join(self.classes) + " |")
        lines.append("|---" * (len(self.classes) + 1) + "|")
        for name, counts in zip(self.classes, self.confusion, strict=True):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in counts) + " |")
        return "\n".join(lines)


def _check_inputs(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> None:
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(f"proba must have shape (n, {len(classes)}), got {proba.shape}")
    if len(y_true) != len(proba) or len(y_true) == 0:
        raise ValueError(f"y_true ({len(y_true)}) and proba ({len(proba)}) must be equal, non-empty")
    if y_true.min() < 0 or y_true.max() >= len(classes):
        raise ValueError(f"y_true must hold class indices 0..{len(classes) - 1}")


def _bin_index(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    # Right-closed bins (lo, hi], as in Guo et al. (2017); searchsorted on the inner edges
    # avoids the float error of ceil(conf * 10) at edges such as 0.3.
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner, confidence, side="left")


def calibration_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Per-bin accuracy and confidence of the max probability (non-empty bins only).

    Args:
        y_true: True class indices, shape (n,).
        proba: Class probabilities, shape (n, k).
        n_bins: Number of equal-width bins on [0, 1].

    Returns:
        One dict per non-empty bin: lo, hi, count, accuracy, confidence.
    """
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    index = _bin_index(confidence, n_bins)
    bins = []
    for b in range(n_bins):
        mask = index == b
        if mask.any():
            bins.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "count": int(mask.sum()),
                    "accuracy": float(correct[mask].mean()),
                    "confidence": float(confidence[mask].mean()),
                }
            )
    return bins


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = N_BINS) -> float:
    """Sum over bins of |accuracy - confidence| * bin size / n."""
    n = len(y_true)
    bins = calibration_bins(y_true, proba, n_bins)
    return float(sum(abs(b["accuracy"] - b["confidence"]) * b["count"] / n for b in bins))


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    # AUC needs both classes (binary) or every class (one-vs-rest) among the labels; a small
    # test set may lack one, and then no AUC is better than sklearn's NaN and warning.
    k = proba.shape[1]
    if len(np.unique(y_true)) < k:
        return None
    if k == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    return float(skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(range(k))))


def bootstrap_intervals(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    positive: int = 1,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of accuracy, macro-F1 and (binary) ROC-AUC.

    Args:
        y_true: True class indices, shape (n,).
        proba: Class probabilities, shape (n, k).
        positive: Binary tasks: index of the positive class (for the AUC).
        n_resamples: Number of resamples; 0 gives no intervals.
        seed: Seed of the resampling.
        confidence: Coverage of each interval.

    Returns:
        Metric -> [low, high]; a metric whose interval is undefined is left out.
    """
    if n_resamples <= 0:
        return {}
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    y_pred = proba.argmax(axis=1)
    k = proba.shape[1]
    binary = k == 2 and len(np.unique(y_true)) == 2

    def statistic(rows: np.ndarray) -> dict[str, np.ndarray]:
        accuracy, macro_f1 = accuracy_macro_f1(confusion_stack(rows, y_true, y_pred, k))
        values = {"accuracy": accuracy, "macro_f1": macro_f1}
        if binary:
            values["roc_auc"] = resampled_roc_auc(rows, proba[:, positive], y_true == positive)
        return values

    samples = bootstrap(len(y_true), statistic, n_resamples, seed)
    intervals = {name: percentile_interval(values, confidence) for name, values in samples.items()}
    return {name: bounds for name, bounds in intervals.items() if bounds is not None}


def _average_precision(y_true: np.ndarray, proba: np.ndarray, positive: int) -> float | None:
    if proba.shape[1] != 2 or len(np.unique(y_true)) < 2:
        return None
    return float(skm.average_precision_score(y_true == positive, proba[:, positive]))


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    labels = list(range(len(classes)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]


def normalised(proba: np.ndarray) -> np.ndarray:
    """Probabilities as float64 rows that sum to 1.

    float32 softmax rows sum to 1 only within ~1e-7, and sklearn's log_loss warns on that.
    """
    proba = np.asarray(proba, dtype=float)
    return proba / proba.sum(axis=1, keepdims=True)


def evaluate_predictions(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    *,
    positive: int = 1,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> EvalReport:
    """Evaluate class probabilities against true class indices.

    Args:
        y_true: True class indices 0..k-1, shape (n,).
        proba: Predicted probabilities, shape (n, k); rows should sum to 1.
        classes: Class names, index i = class index i.
        positive: Binary tasks: index of the positive class, for average precision (the ROC-AUC
            is the same either way).
        n_resamples: Bootstrap resamples behind the 95% intervals; 0 for none.
        seed: Seed of the resampling (fixed, so a report is reproducible).

    Returns:
        The :class:`EvalReport`. The predicted class is the arg-max of `proba`.

    Raises:
        ValueError: Shapes disagree, no rows, or a label outside 0..k-1.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    _check_inputs(y_true, proba, classes)
    proba = normalised(proba)
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    binary = len(classes) == 2
    if binary and positive not in (0, 1):
        raise ValueError(f"positive must be 0 or 1 for a binary task, got {positive}")
    return EvalReport(
        n=len(y_true),
        accuracy=float(skm.accuracy_score(y_true, y_pred)),
        # sklearn's default label set (classes seen in labels or predictions): a small test set
        # that lacks a class is not charged an F1 of 0 for it.
        macro_f1=float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        roc_auc=_roc_auc(y_true, proba),
        ece=expected_calibration_error(y_true, proba),
        log_loss=float(skm.log_loss(y_true, proba, labels=labels)),
        confusion=skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        classes=list(classes),
        per_class=_per_class(y_true, y_pred, classes),
        average_precision=_average_precision(y_true, proba, positive) if binary else None,
        positive_class=classes[positive] if binary else None,
        intervals=bootstrap_intervals(y_true, proba, positive=positive, n_resamples=n_resamples, seed=seed),
    )


def plot_confusion_matrix(report: EvalReport) -> Figure:
    """A heat map of the confusion counts, rows = true class, annotated with the counts."""
    counts = np.asarray(report.confusion)
    k = len(report.classes)
    size = max(3.0, 0.5 * k + 2.0)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = list(range(k))
    ax.set_xticks(ticks, labels=report.classes)
    ax.set_yticks(ticks, labels=report.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (n={report.n})")
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(k):
        for j in range(k):
            colour = "white" if counts[i, j] > threshold else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    return fig


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    # Epochs may lack a figure (e.g. no validation on the sanity step): skip them, not fail.
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot_learning_curves(history: list[dict[str, Any]]) -> Figure:
    """Two panels: train/val loss, and val accuracy (with the learning rate on a second axis).

    Args:
        history: One dict per epoch with keys epoch, train_loss, val_loss, val_accuracy, lr;
            a missing or None figure is skipped.
    """
    fig = Figure(figsize=(10, 4))
    losses, accuracy = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        x, y = _series(history, key)
        if x:
            losses.plot(x, y, marker="o", markersize=3, label=key)
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.set_title("Loss")
    losses.legend(loc="upper right")
    x, y = _series(history, "val_accuracy")
    if x:
        accuracy.plot(x, y, marker="o", markersize=3, color="tab:green", label="val_accuracy")
    accuracy.set_xlabel("epoch")
    accuracy.set_ylabel("validation accuracy")
    accuracy.set_title("Validation accuracy")
    x, y = _series(history, "lr")
    if x:
        lr_axis = accuracy.twinx()
        lr_axis.plot(x, y, linestyle="--", color="tab:gray", label="lr")
        lr_axis.set_ylabel("learning rate")
    fig.tight_layout()
    return fig


def plot_reliability(y_true: np.ndarray, proba: np.ndarray) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with the ECE."""
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    bins = calibration_bins(y_true, proba)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    width = 1.0 / N_BINS
    ax.bar(
        [b["lo"] for b in bins],
        [b["accuracy"] for b in bins],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE={expected_calibration_error(y_true, proba):.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def _binary_curves_input(
    y_true: np.ndarray, proba: np.ndarray, positive: int, champion_proba: np.ndarray | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    y_true = np.asarray(y_true).astype(int)
    models = {"challenger": np.asarray(proba, dtype=float)}
    if champion_proba is not None:
        models["champion"] = np.asarray(champion_proba, dtype=float)
    for name, p in models.items():
        if p.ndim != 2 or p.shape[1] != 2 or len(p) != len(y_true):
            raise ValueError(f"ROC and PR curves are for binary tasks: {name} proba has shape {p.shape}")
    if len(np.unique(y_true)) < 2:
        raise ValueError("ROC and PR curves need both classes among the labels")
    if positive not in (0, 1):
        raise ValueError(f"positive must be 0 or 1, got {positive}")
    return y_true == positive, {name: p[:, positive] for name, p in models.items()}


def plot_roc_curve(
    y_true: np.ndarray, proba: np.ndarray, *, positive: int = 1, champion_proba: np.ndarray | None = None
) -> Figure:
    """ROC curve of the positive class of a binary task, with its AUC.

    Args:
        y_true: True class indices (0 or 1), shape (n,).
        proba: The challenger's probabilities, shape (n, 2).
        positive: Index of the positive class.
        champion_proba: The champion's probabilities on the same rows, drawn alongside.

    Raises:
        ValueError: Not a binary task, or one class absent from the labels.
    """
    truth, scores = _binary_curves_input(y_true, proba, positive, champion_proba)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    for name, score in scores.items():
        fpr, tpr, _ = skm.roc_curve(truth, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(truth, score):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC (n={len(truth)})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_pr_curve(
    y_true: np.ndarray, proba: np.ndarray, *, positive: int = 1, champion_proba: np.ndarray | None = None
) -> Figure:
    """Precision-recall curve of the positive class of a binary task, with its average precision.

    Args:
        y_true: True class indices (0 or 1), shape (n,).
        proba: The challenger's probabilities, shape (n, 2).
        positive: Index of the positive class.
        champion_proba: The champion's probabilities on the same rows, drawn alongside.

    Raises:
        ValueError: Not a binary task, or one class absent from the labels.
    """
    truth, scores = _binary_curves_input(y_true, proba, positive, champion_proba)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    for name, score in scores.items():
        precision, recall, _ = skm.precision_recall_curve(truth, score)
        ap = skm.average_precision_score(truth, score)
        ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})")
    prevalence = float(truth.mean())
    ax.axhline(prevalence, linestyle="--", color="gray", label=f"chance ({prevalence:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall (n={len(truth)})")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig
