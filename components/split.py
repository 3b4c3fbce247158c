"""Train/validation/test split: stratified and seeded, or the latest period as test.

Every row lands in exactly one split, and the same data and config always give the same split.
With a time column the test split is the latest period(s), so the test score estimates how the
model does on data newer than anything it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from components.config import DataConfig, SplitConfig
from components.dataset import Dataset


@dataclass
class SplitIndices:
    """Row positions of each split, sorted ascending.

    Attributes:
        train: Rows to fit on.
        val: Rows for early stopping and model selection.
        test: Rows held out for the final evaluation.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        """Rows per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _stratified(rows: np.ndarray, labels: np.ndarray, size: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (rest, held) with `size` held rows, stratified by label."""
    counts = pd.Series(labels).value_counts()
    too_few = counts[counts < 2]
    if not too_few.empty:
        named = ", ".join(f"{label!r} ({n} row)" for label, n in too_few.items())
        raise ValueError(f"cannot stratify the {what} split: every class needs at least 2 rows, but {named}")
    try:
        rest, held = train_test_split(rows, test_size=size, stratify=labels, random_state=seed)
    except ValueError as error:  # e.g. fewer held rows than classes
        raise ValueError(f"cannot stratify the {what} split of {len(rows)} rows: {error}") from None
    return rest, held


def _latest_periods(times: pd.Series, fraction: float) -> np.ndarray:
    """Positions of the rows of the latest periods, taking periods until `fraction` is reached."""
    if times.isna().any():
        raise ValueError(f"time column {times.name!r} has {int(times.isna().sum())} missing values")
    counts = times.value_counts().sort_index(ascending=False)
    if len(counts) < 2:
        raise ValueError(f"time column {times.name!r} has a single period: nothing left to train on")
    needed = fraction * len(times)
    # Take whole periods, newest first, until the test split holds enough rows.
    taken = counts.index[: int(np.searchsorted(counts.cumsum().to_numpy(), needed) + 1)]
    if len(taken) == len(counts):
        raise ValueError(
            f"the latest periods of {times.name!r} hold every row: need more periods to keep "
            f"{fraction:.0%} of rows for test and the rest for training"
        )
    return np.flatnonzero(times.isin(taken).to_numpy())


def split_dataset(dataset: Dataset, data: DataConfig, split: SplitConfig) -> SplitIndices:
    """Split a dataset into train, validation and test rows.

    Without `data.time`: test then validation are drawn stratified by label with `split.seed`.
    With `data.time`: test is the rows of the latest period(s) (newest first, whole periods,
    until at least `split.test_fraction` of rows); validation is drawn stratified from the rest.
    Validation holds `split.val_fraction` of all rows in both cases.

    Args:
        dataset: The data to split.
        data: The pipeline's data section (target and time columns).
        split: Fractions and seed.

    Raises:
        ValueError: A label is missing, a class has too few rows to stratify, or the time
            column cannot separate a test period from training data.
    """
    labels = dataset.labels
    if labels.isna().any():
        raise ValueError(f"cannot split: {int(labels.isna().sum())} rows have no label in {dataset.target!r}")
    y = labels.to_numpy()
    rows = np.arange(len(dataset))
    if data.time is not None:
        test = _latest_periods(dataset.table[data.time], split.test_fraction)
        rest = np.setdiff1d(rows, test)
    else:
        rest, test = _stratified(rows, y, round(split.test_fraction * len(rows)), split.seed, "test")
    val_size = round(split.val_fraction * len(rows))
    train, val = _stratified(rest, y[rest], val_size, split.seed, "validation")
    return SplitIndices(np.sort(train), np.sort(val), np.sort(test))


def limit_shots(split: SplitIndices, labels: pd.Series, shots: int, seed: int = 0) -> SplitIndices:
    """Few-shot: keep at most `shots` training rows per class (a seeded choice); val and test stay.

    Args:
        split: The full split.
        labels: The dataset's label column (positions match the split's indices).
        shots: Labelled training rows per class.
        seed: Which rows are kept.
    """
    rng = np.random.default_rng(seed)
    train_labels = labels.iloc[split.train].astype(str).to_numpy()
    kept = []
    for label in sorted(set(train_labels)):
        rows = split.train[train_labels == label]
        kept.append(rows if len(rows) <= shots else rng.choice(rows, shots, replace=False))
    return SplitIndices(np.sort(np.concatenate(kept)), split.val, split.test)
