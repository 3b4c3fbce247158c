"""Label gate: are the labels usable for training?

Checks that every row has a label, that labels come from the known classes, that there are at
least two classes with enough rows each and not too lopsided, that few rows conflict (equal
inputs, different labels: no model can get both right, and such rows usually mean labelling
errors), and, when several annotators labelled the data, that they agree beyond chance.

:func:`leakage` is checked after the split: test rows whose inputs appear verbatim in the
training split measure memory, not generalisation.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from components.config import DataConfig, LabelGate
from components.dataset import Dataset, feature_columns
from components.gates import Check, GateReport, threshold_check
from components.split import SplitIndices


def input_keys(dataset: Dataset, data: DataConfig) -> pd.Series:
    """One hash per row of the model's input: equal inputs give equal keys (also across datasets)."""
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
    keys = input_keys(dataset, data)[labelled]
    labels = dataset.labels[labelled]
    labels_per_input = labels.groupby(keys.to_numpy()).transform("nunique")
    return float((labels_per_input > 1).mean())


def imbalance_ratio(counts: pd.Series) -> float:
    """Rows of the largest class over rows of the smallest (1.0: balanced; inf: a class is empty)."""
    if len(counts) == 0 or counts.min() == 0:
        return float("inf")
    return float(counts.max() / counts.min())


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a table of rating counts.

    Args:
        counts: (items, categories) array: how many raters put item i in category j. Every
            item must have the same number of raters (at least two).

    Returns:
        (P - Pe) / (1 - Pe), with P the mean pairwise agreement per item and Pe the agreement
        expected by chance from the overall category shares. When every rating falls in one
        category, chance agreement is already perfect and kappa is undefined: NaN.
    """
    counts = np.asarray(counts, dtype=np.float64)
    raters = counts.sum(axis=1)
    if counts.ndim != 2 or len(counts) == 0 or raters[0] < 2 or not np.all(raters == raters[0]):
        raise ValueError("fleiss_kappa needs at least one item, rated by the same number (>= 2) of raters")
    n = raters[0]
    per_item = (np.square(counts).sum(axis=1) - n) / (n * (n - 1))
    shares = counts.sum(axis=0) / counts.sum()
    observed, chance = per_item.mean(), np.square(shares).sum()
    if np.isclose(chance, 1.0):
        return float("nan")
    return float((observed - chance) / (1.0 - chance))


def annotator_agreement(table: pd.DataFrame, columns: list[str]) -> tuple[str, float, int]:
    """Chance-corrected agreement of the annotators' labels.

    Rows where any annotator gave no label are left out: both kappas assume every item was
    rated by every annotator.

    Args:
        table: The rows, one column per annotator.
        columns: Two annotator columns (Cohen's kappa) or more (Fleiss' kappa).

    Returns:
        The statistic's name, its value (NaN when undefined: fewer than two fully rated rows,
        or a single category overall) and the number of rows it was computed on.
    """
    # Labels are compared as text so that 1 and "1" from differently typed columns agree.
    rated = table[columns].dropna().astype(str)
    name = "cohen_kappa" if len(columns) == 2 else "fleiss_kappa"
    if len(rated) < 2 or pd.unique(rated.to_numpy().ravel()).size < 2:
        return name, float("nan"), len(rated)
    if len(columns) == 2:
        return name, float(cohen_kappa_score(rated[columns[0]], rated[columns[1]])), len(rated)
    codes, _ = pd.factorize(rated.to_numpy().ravel())
    codes = codes.reshape(rated.shape)
    counts = np.stack([(codes == k).sum(axis=1) for k in range(codes.max() + 1)], axis=1)
    return name, fleiss_kappa(counts), len(rated)


def _agreement_check(table: pd.DataFrame, columns: list[str], floor: float | None) -> tuple[Check, float]:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        return Check("min_annotator_agreement", False, f"annotator columns not in the data: {missing}"), float("nan")
    name, kappa, rows = annotator_agreement(table, columns)
    what = f"annotator agreement ({name} over {len(columns)} annotators, {rows} fully rated rows)"
    if np.isnan(kappa):
        # Without a floor the figure is reported only, so its absence warns rather than blocks.
        severity: Literal["fail", "warn"] = "fail" if floor is not None else "warn"
        return Check("min_annotator_agreement", False, f"{what} could not be computed", None, floor, severity), kappa
    if floor is None:
        detail = f"{what}: {kappa:.4f}; no min_annotator_agreement configured, so it is reported, not gated"
        return Check("min_annotator_agreement", True, detail, kappa, None), kappa
    return threshold_check("min_annotator_agreement", kappa, floor, at_least=True, what=what), kappa


def _min_per_class_check(counts: pd.Series, floor: int) -> Check:
    smallest = int(counts.min()) if len(counts) else 0
    short = counts[counts < floor]
    if len(counts) and short.empty:
        detail = f"every class has at least {floor} rows (smallest: {smallest})"
        return Check("min_per_class", True, detail, float(smallest), float(floor))
    named = ", ".join(f"{label!r}: {int(n)}" for label, n in short.items())
    detail = f"classes below {floor} rows: {named}" if named else "no labelled rows"
    return Check("min_per_class", False, detail, float(smallest), float(floor))


def _known_classes_check(counts: pd.Series, known_classes: list) -> Check:
    unknown = sorted(set(counts.index) - set(known_classes), key=str)
    detail = (
        f"labels outside the known classes {list(known_classes)}: {unknown}"
        if unknown
        else "all labels are known classes"
    )
    return Check("known_classes", not unknown, detail, float(len(unknown)), 0.0)


def check_labels(dataset: Dataset, data: DataConfig, gate: LabelGate, known_classes: list | None = None) -> GateReport:
    """Run the label checks.

    Args:
        dataset: The data to train on.
        data: The pipeline's data section (feature columns; `annotators` turns on the
            agreement check).
        gate: Thresholds: minimum rows per class, largest imbalance ratio and conflict
            fraction, annotator agreement floor (each optional one is skipped or, for the
            agreement, reported only, when unset).
        known_classes: The classes the model knows (e.g. the champion's); when given, any other
            label fails the gate, since the served model could never predict it.

    Returns:
        A `labels` GateReport; figures n_classes, min_class_count, conflict_fraction,
        missing_labels, imbalance_ratio and, with two or more annotators, annotator_agreement.
    """
    labels = dataset.labels
    missing = int(labels.isna().sum())
    counts = labels.dropna().value_counts().sort_index()
    conflicts = conflict_fraction(dataset, data)
    ratio = imbalance_ratio(counts)
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
        checks.append(_known_classes_check(counts, known_classes))
    checks.append(threshold_check("min_classes", float(len(counts)), 2.0, at_least=True, what="number of classes"))
    checks.append(_min_per_class_check(counts, gate.min_per_class))
    if gate.max_imbalance_ratio is not None:
        checks.append(
            threshold_check(
                "max_imbalance_ratio",
                ratio,
                gate.max_imbalance_ratio,
                at_least=False,
                what="rows of the largest class over the smallest",
            )
        )
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
        "imbalance_ratio": ratio,
    }
    if len(data.annotators) >= 2:
        check, kappa = _agreement_check(dataset.table, data.annotators, gate.min_annotator_agreement)
        checks.append(check)
        figures["annotator_agreement"] = kappa
    return GateReport("labels", checks=checks, figures=figures)


def leakage_fraction(dataset: Dataset, data: DataConfig, split: SplitIndices) -> float:
    """Share of test rows whose model input (table features, or image bytes) is also a training row's.

    Args:
        dataset: The whole dataset.
        data: The pipeline's data section (decides the feature columns of a table).
        split: The row positions of each split; only train and test are compared.
    """
    if len(split.test) == 0:
        return 0.0
    keys = input_keys(dataset, data).to_numpy()
    return float(np.isin(keys[split.test], keys[split.train]).mean())


def leakage(dataset: Dataset, data: DataConfig, split: SplitIndices, gate: LabelGate | None = None) -> Check:
    """Check that few test rows appear verbatim in the training split.

    A model can score such rows from memory, so a high share inflates the test score. Tables
    with few, coarse features repeat rows by nature (different people, same feature values):
    there a time split, or a `max_leakage_fraction` set to the share a random split gives, is
    the way out, not deduplication.

    Args:
        dataset: The whole dataset.
        data: The pipeline's data section.
        split: Train/validation/test row positions.
        gate: Holds `max_leakage_fraction` (default: LabelGate's, 0).

    Returns:
        A `max_leakage_fraction` check, to add to the labels gate's report.
    """
    ceiling = (gate or LabelGate()).max_leakage_fraction
    return threshold_check(
        "max_leakage_fraction",
        leakage_fraction(dataset, data, split),
        ceiling,
        at_least=False,
        what="share of test rows whose inputs appear verbatim in the training split",
    )
