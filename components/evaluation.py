"""Evaluation of a classifier's predicted probabilities: metrics, report and figures.

:func:`evaluate_predictions` turns labels and class probabilities into an :class:`EvalReport`
that renders itself (dict for MLflow JSON, markdown for Prefect) and reloads from its dict, so a
champion's stored report can be compared with a challenger's. The plots use matplotlib's
object-oriented API (``Figure()``, never pyplot), so no global backend state is touched and
they work headless; callers save them with ``fig.savefig``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

N_BINS = 10


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

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow; `roc_auc` is left out when it is None."""
        figures = {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "log_loss": self.log_loss,
        }
        if self.roc_auc is not None:
            figures["roc_auc"] = self.roc_auc
        return figures

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. a champion's stored JSON)."""
        roc_auc = data.get("roc_auc")
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
        )

    def to_markdown(self) -> str:
        """Headline metrics, per-class table and confusion matrix as markdown."""
        auc = "n/a" if self.roc_auc is None else f"{self.roc_auc:.4f}"
        lines = [
            f"### Evaluation on {self.n} rows",
            "",
            "| accuracy | macro F1 | ROC AUC | ECE | log loss |",
            "|---|---|---|---|---|",
            f"| {self.accuracy:.4f} | {self.macro_f1:.4f} | {auc} | {self.ece:.4f} | {self.log_loss:.4f} |",
            "",
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


def evaluate_predictions(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> EvalReport:
    """Evaluate class probabilities against true class indices.

    Args:
        y_true: True class indices 0..k-1, shape (n,).
        proba: Predicted probabilities, shape (n, k); rows should sum to 1.
        classes: Class names, index i = class index i.

    Returns:
        The :class:`EvalReport`. The predicted class is the arg-max of `proba`.

    Raises:
        ValueError: Shapes disagree, no rows, or a label outside 0..k-1.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    _check_inputs(y_true, proba, classes)
    # float32 softmax rows sum to 1 only within ~1e-7; sklearn's log_loss warns on that.
    proba = proba / proba.sum(axis=1, keepdims=True)
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
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
