"""Label gate: are the labels usable for training?

Checks that every row has a label, that labels come from the known classes, that there are at
least two classes with enough rows each, and that few rows conflict (equal inputs, different
labels: no model can get both right, and such rows usually mean labelling errors).
"""

from __future__ import annotations

import hashlib

import pandas as pd

from components.config import DataConfig, LabelGate
from components.dataset import Dataset, feature_columns
from components.gates import Check, GateReport, threshold_check


def _input_keys(dataset: Dataset, data: DataConfig) -> pd.Series:
    """One hash per row of the model's input: equal inputs give equal keys."""
    if dataset.images is not None:
        keys = [hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() for image in dataset.images]
        return pd.Series(keys, index=dataset.table.index)
    columns = feature_columns(data, dataset.table)
    if not columns:
        return pd.Series(0, index=dataset.table.index)  # no inputs: every row looks the same
    return pd.util.hash_pandas_object(dataset.table[columns], index=False)


def conflict_fraction(dataset: Dataset, data: DataConfig) -> float:
    """Share of labelled rows in groups of equal inputs that carry more than one label.

    Args:
        dataset: The dataset; rows without a label are left out.
        data: The pipeline's data section (decides the feature columns of a table).
    """
    labelled = dataset.labels.notna().to_numpy()
    if not labelled.any():
        return 0.0
    keys = _input_keys(dataset, data)[labelled]
    labels = dataset.labels[labelled]
    labels_per_input = labels.groupby(keys.to_numpy()).transform("nunique")
    return float((labels_per_input > 1).mean())


def _min_per_class_check(counts: pd.Series, floor: int) -> Check:
    smallest = int(counts.min()) if len(counts) else 0
    short = counts[counts < floor]
    if len(counts) and short.empty:
        detail = f"every class has at least {floor} rows (smallest: {smallest})"
        return Check("min_per_class", True, detail, float(smallest), float(floor))
    named = ", ".join(f"{label!r}: {int(n)}" for label, n in short.items())
    detail = f"classes below {floor} rows: {named}" if named else "no labelled rows"
    return Check("min_per_class", False, detail, float(smallest), float(floor))


def check_labels(dataset: Dataset, data: DataConfig, gate: LabelGate, known_classes: list | None = None) -> GateReport:
    """Run the label checks.

    Args:
        dataset: The data to train on.
        data: The pipeline's data section.
        gate: Thresholds: minimum rows per class, largest conflict fraction.
        known_classes: The classes the model knows (e.g. the champion's); when given, any other
            label fails the gate, since the served model could never predict it.

    Returns:
        A `labels` GateReport; figures n_classes, min_class_count, conflict_fraction,
        missing_labels.
    """
    labels = dataset.labels
    missing = int(labels.isna().sum())
    counts = labels.dropna().value_counts().sort_index()
    conflicts = conflict_fraction(dataset, data)
    checks = [
        Check(
            "labels_present",
            missing == 0,
            "every row has a label" if missing == 0 else f"{missing} of {len(labels)} rows have no label",
            float(missing),
            0.0,
        )
    ]
    if known_classes is not None:
        unknown = sorted(set(counts.index) - set(known_classes), key=str)
        detail = (
            f"labels outside the known classes {list(known_classes)}: {unknown}"
            if unknown
            else "all labels are known classes"
        )
        checks.append(Check("known_classes", not unknown, detail, float(len(unknown)), 0.0))
    checks.append(threshold_check("min_classes", float(len(counts)), 2.0, at_least=True, what="number of classes"))
    checks.append(_min_per_class_check(counts, gate.min_per_class))
    checks.append(
        threshold_check(
            "max_conflict_fraction",
            conflicts,
            gate.max_conflict_fraction,
            at_least=False,
            what="share of rows whose equal inputs carry different labels",
        )
    )
    figures = {
        "n_classes": float(len(counts)),
        "min_class_count": float(counts.min()) if len(counts) else 0.0,
        "conflict_fraction": conflicts,
        "missing_labels": float(missing),
    }
    return GateReport("labels", checks=checks, figures=figures)
