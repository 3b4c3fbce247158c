"""Bias gate: group fairness of a binary classifier on every sensitive column (Fairlearn).

For each sensitive column the audit tabulates, per group, the count, accuracy, selection rate
(share predicted positive), true-positive rate and false-positive rate, then checks:

- ``demographic_parity_ratio(col)`` >= ``gate.min_demographic_parity_ratio``. This threshold
  is required: left empty (None) the check fails closed, as every gate threshold does.
- ``equalized_odds_difference(col)`` <= ``gate.max_equalized_odds_difference``. This one is
  optional: None means "not checked" (the figure is still reported).

Groups with fewer than `min_group_size` rows are left out of both figures (their rates are
noise) and named in the check's detail as "too small to judge". When fewer than two groups are
large enough, parity cannot be judged and the check fails closed. The audit covers binary
classifiers only: for multiclass labels it returns a not-applicable report saying so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from components.config import BiasGate
from components.gates import Check, GateReport, threshold_check

MISSING_GROUP = "(missing)"
_RATES = ("accuracy", "selection_rate", "tpr", "fpr")


@dataclass
class BiasReport(GateReport):
    """A :class:`GateReport` that also carries the per-group tables.

    Attributes:
        groups: Sensitive column -> one dict per group: group, count, accuracy,
            selection_rate, tpr, fpr, judged (False when too small to judge).
    """

    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The gate's JSON form plus the per-group tables."""
        return {**super().to_dict(), "groups": self.groups}

    def to_markdown(self) -> str:
        """The checks table followed by one per-group table per sensitive column."""
        lines = [super().to_markdown()]
        for column, rows in self.groups.items():
            lines += ["", f"#### `{column}` by group", ""]
            lines += ["| group | count | accuracy | selection rate | TPR | FPR | judged |"]
            lines += ["|---|---|---|---|---|---|---|"]
            for row in rows:
                rates = " | ".join(f"{row[k]:.4f}" for k in _RATES)
                judged = "yes" if row["judged"] else "too small to judge"
                lines.append(f"| {row['group']} | {row['count']} | {rates} | {judged} |")
        return "\n".join(lines)


def _group_labels(column: pd.Series) -> np.ndarray:
    # Missing membership is a group of its own, so those rows are audited, not dropped.
    return column.astype(object).where(column.notna(), MISSING_GROUP).astype(str).to_numpy()


def _group_table(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, min_size: int) -> list[dict[str, Any]]:
    frame = MetricFrame(
        metrics={
            "accuracy": accuracy_score,
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "count": lambda yt, yp: len(yt),
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    rows = []
    for group, values in frame.by_group.iterrows():
        count = int(values["count"])
        row: dict[str, Any] = {"group": str(group), "count": count}
        row.update({k: float(values[k]) for k in _RATES})
        row["judged"] = count >= min_size
        rows.append(row)
    return rows


def _finite(value: float) -> float | None:
    # Fairlearn yields NaN when a ratio is 0/0 (e.g. no group is ever selected); treat it as
    # "could not be computed" so the check fails closed instead of comparing NaN.
    value = float(value)
    return value if math.isfinite(value) else None


def _too_small_note(rows: list[dict[str, Any]], min_size: int) -> str:
    small = [f"{r['group']} ({r['count']})" for r in rows if not r["judged"]]
    if not small:
        return ""
    return f"; too small to judge (< {min_size} rows), left out: {', '.join(small)}"


def _audit_column(
    column: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    rows: list[dict[str, Any]],
    gate: BiasGate,
    min_size: int,
) -> tuple[list[Check], dict[str, float]]:
    judged = {r["group"] for r in rows if r["judged"]}
    note = _too_small_note(rows, min_size)
    dp_name, eo_name = f"demographic_parity_ratio({column})", f"equalized_odds_difference({column})"
    if len(judged) < 2:
        detail = f"{column}: fewer than two groups with >= {min_size} rows, so parity cannot be judged{note}"
        checks = [Check(dp_name, False, detail, None, gate.min_demographic_parity_ratio)]
        if gate.max_equalized_odds_difference is not None:
            checks.append(Check(eo_name, False, detail, None, gate.max_equalized_odds_difference))
        return checks, {}
    mask = np.isin(groups, list(judged))
    kwargs = {"y_true": y_true[mask], "y_pred": y_pred[mask], "sensitive_features": groups[mask]}
    dp = _finite(demographic_parity_ratio(**kwargs))
    eo = _finite(equalized_odds_difference(**kwargs))
    checks = [
        threshold_check(
            dp_name,
            dp,
            gate.min_demographic_parity_ratio,
            at_least=True,
            what=f"{column}: demographic-parity ratio (min/max selection rate)",
        )
    ]
    if gate.max_equalized_odds_difference is not None:
        checks.append(
            threshold_check(
                eo_name,
                eo,
                gate.max_equalized_odds_difference,
                at_least=False,
                what=f"{column}: equalized-odds difference (max TPR/FPR gap)",
            )
        )
    checks = [replace(c, detail=c.detail + note) for c in checks]
    figures = {f"dp_ratio_{column}": dp, f"eo_diff_{column}": eo}
    return checks, {k: v for k, v in figures.items() if v is not None}


def _is_multiclass(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None) -> bool:
    if n_classes is not None:
        return n_classes > 2
    return len(np.union1d(np.unique(y_true), np.unique(y_pred))) > 2


def audit_bias(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: pd.DataFrame,
    gate: BiasGate,
    positive: int = 1,
    min_group_size: int = 20,
    *,
    n_classes: int | None = None,
) -> BiasReport:
    """Audit a binary classifier's predictions for group fairness on each sensitive column.

    Args:
        y_true: True class indices, shape (n,).
        y_pred: Predicted class indices, shape (n,).
        sensitive: One column per sensitive attribute, n rows, aligned with `y_true`.
        gate: Thresholds; `min_demographic_parity_ratio` None fails closed,
            `max_equalized_odds_difference` None skips that check.
        positive: The class index that counts as the positive (selected) outcome.
        min_group_size: Groups with fewer rows are left out of the ratios, and reported.
        n_classes: Number of classes of the model; inferred from the labels when None.

    Returns:
        A :class:`BiasReport` (gate `bias`). Not applicable when `sensitive` has no columns
        or the problem is multiclass.

    Raises:
        ValueError: The arrays and the frame disagree in length.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not (len(y_true) == len(y_pred) == len(sensitive)):
        raise ValueError(f"lengths differ: y_true {len(y_true)}, y_pred {len(y_pred)}, sensitive {len(sensitive)}")
    if sensitive.shape[1] == 0:
        note = Check(
            "no_sensitive_columns",
            True,
            "no sensitive columns configured, so there is nothing to audit",
        )
        return BiasReport("bias", [note], applicable=False)
    if _is_multiclass(y_true, y_pred, n_classes):
        note = Check("multiclass", True, "bias audit covers binary classifiers only")
        return BiasReport("bias", [note], applicable=False)
    truth, pred = (y_true == positive).astype(int), (y_pred == positive).astype(int)
    report = BiasReport("bias")
    for column in sensitive.columns:
        groups = _group_labels(sensitive[column])
        rows = _group_table(truth, pred, groups, min_group_size)
        checks, figures = _audit_column(str(column), truth, pred, groups, rows, gate, min_group_size)
        report.groups[str(column)] = rows
        report.checks += checks
        report.figures.update(figures)
    return report
