"""Split: sizes, disjointness, stratification, the time split and determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, SplitConfig
from components.dataset import Dataset
from components.split import SplitIndices, limit_shots, split_dataset

DATA = DataConfig(source="csv:x.csv", target="y")
TIMED = DataConfig(source="csv:x.csv", target="y", time="year")


def _dataset() -> Dataset:
    # 40 rows: 30 of class A, 10 of B; years 2018 x10, 2019 x10, 2020 x15, 2021 x5.
    table = pd.DataFrame(
        {
            "x": np.arange(40),
            "y": ["A", "A", "A", "B"] * 10,
            "year": [2018] * 10 + [2019] * 10 + [2020] * 15 + [2021] * 5,
        }
    )
    return Dataset("tabular", table, "y")


def _assert_partition(parts, n: int) -> None:
    joined = np.concatenate([parts.train, parts.val, parts.test])
    assert len(joined) == n
    assert sorted(joined.tolist()) == list(range(n))  # disjoint and covers every row


def test_stratified_sizes_and_proportions():
    dataset = _dataset()
    parts = split_dataset(dataset, DATA, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1))
    _assert_partition(parts, 40)
    assert parts.sizes() == {"train": 24, "val": 8, "test": 8}
    labels = dataset.labels.to_numpy()
    # 3:1 in every split
    assert (labels[parts.test] == "B").sum() == 2
    assert (labels[parts.val] == "B").sum() == 2
    assert (labels[parts.train] == "B").sum() == 6


def test_same_seed_same_split_other_seed_other_split():
    config = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=7)
    first, again = split_dataset(_dataset(), DATA, config), split_dataset(_dataset(), DATA, config)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    other = split_dataset(_dataset(), DATA, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=8))
    assert not np.array_equal(first.test, other.test)


def test_time_split_puts_the_latest_year_in_test():
    dataset = _dataset()
    parts = split_dataset(dataset, TIMED, SplitConfig(val_fraction=0.1, test_fraction=0.1, seed=0))
    _assert_partition(parts, 40)
    np.testing.assert_array_equal(parts.test, np.arange(35, 40))  # the 5 rows of 2021
    assert len(parts.val) == 4
    assert dataset.table["year"].iloc[parts.val].max() <= 2020


def test_time_split_takes_whole_periods_until_the_fraction_is_reached():
    # 20% of 40 = 8 rows: 2021 has 5, so 2020 (15 rows) joins it.
    parts = split_dataset(_dataset(), TIMED, SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=0))
    np.testing.assert_array_equal(parts.test, np.arange(20, 40))
    assert len(parts.train) == 16


def test_class_too_small_to_stratify_raises_a_clear_error():
    dataset = _dataset()
    dataset.table.loc[0, "y"] = "C"
    with pytest.raises(ValueError, match="every class needs at least 2 rows, but 'C'"):
        split_dataset(dataset, DATA, SplitConfig())


def test_single_period_cannot_be_time_split():
    dataset = _dataset()
    dataset.table["year"] = 2020
    with pytest.raises(ValueError, match="single period"):
        split_dataset(dataset, TIMED, SplitConfig())


def test_missing_labels_cannot_be_split():
    dataset = _dataset()
    dataset.table.loc[3, "y"] = None
    with pytest.raises(ValueError, match="1 rows have no label"):
        split_dataset(dataset, DATA, SplitConfig())


def test_limit_shots_keeps_k_training_rows_per_class_and_leaves_val_test() -> None:
    labels = pd.Series(["a"] * 30 + ["b"] * 30)
    split = SplitIndices(np.arange(0, 50), np.arange(50, 55), np.arange(55, 60))
    few = limit_shots(split, labels, 5, seed=1)
    assert labels.iloc[few.train].value_counts().to_dict() == {"a": 5, "b": 5}
    assert set(few.train) <= set(split.train)
    np.testing.assert_array_equal(few.val, split.val)
    np.testing.assert_array_equal(few.test, split.test)
    np.testing.assert_array_equal(limit_shots(split, labels, 5, seed=1).train, few.train)  # seeded
    assert len(limit_shots(split, labels, 100).train) == 50  # fewer rows than shots: all kept
