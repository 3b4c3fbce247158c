"""Label gate: counts, domain and conflicting duplicates, checked against hand counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, LabelGate
from components.dataset import Dataset
from components.labels import check_labels, conflict_fraction

DATA = DataConfig(source="csv:x.csv", target="y", sensitive=["sex"])


def _table() -> pd.DataFrame:
    # rows 0 and 1: equal features (sex is sensitive, so not a feature), different labels.
    return pd.DataFrame(
        {
            "x1": [1, 1, 2, 2, 3, 4],
            "x2": ["a", "a", "b", "b", "c", "d"],
            "sex": ["F", "M", "F", "F", "M", "M"],
            "y": ["Y", "N", "Y", "Y", "N", "N"],
        }
    )


def _dataset(table: pd.DataFrame) -> Dataset:
    return Dataset("tabular", table, "y")


def _check(report, name: str):
    return next(c for c in report.checks if c.name == name)


def test_figures_by_hand():
    report = check_labels(_dataset(_table()), DATA, LabelGate(min_per_class=3, max_conflict_fraction=0.5))
    assert report.gate == "labels"
    assert report.passed, report.headline()
    assert report.figures == {
        "n_classes": 2.0,
        "min_class_count": 3.0,
        "conflict_fraction": pytest.approx(2 / 6),
        "missing_labels": 0.0,
    }


def test_conflict_fraction_above_threshold_fails():
    report = check_labels(_dataset(_table()), DATA, LabelGate(min_per_class=1, max_conflict_fraction=0.2))
    assert [c.name for c in report.failures()] == ["max_conflict_fraction"]


def test_equal_rows_with_equal_labels_are_no_conflict():
    table = _table()
    table.loc[1, "y"] = "Y"
    assert conflict_fraction(_dataset(table), DATA) == 0.0


def test_a_sensitive_feature_separates_rows_when_fed_to_the_model():
    data = DataConfig(source="csv:x.csv", target="y", sensitive=["sex"], sensitive_as_features=True)
    assert conflict_fraction(_dataset(_table()), data) == 0.0


def test_class_below_minimum_is_named():
    table = pd.concat([_table(), pd.DataFrame({"x1": [9], "x2": ["z"], "sex": ["F"], "y": ["Maybe"]})])
    gate = LabelGate(min_per_class=2, max_conflict_fraction=1)
    report = check_labels(_dataset(table.reset_index(drop=True)), DATA, gate)
    check = _check(report, "min_per_class")
    assert not check.passed
    assert check.detail == "classes below 2 rows: 'Maybe': 1"
    assert report.figures["min_class_count"] == 1.0


def test_single_class_fails():
    table = _table().assign(y="Y")
    report = check_labels(_dataset(table), DATA, LabelGate(min_per_class=1))
    assert [c.name for c in report.failures()] == ["min_classes"]
    assert report.figures["n_classes"] == 1.0


def test_missing_labels_fail():
    table = _table()
    table.loc[2, "y"] = None
    report = check_labels(_dataset(table), DATA, LabelGate(min_per_class=1, max_conflict_fraction=1))
    assert [c.name for c in report.failures()] == ["labels_present"]
    assert _check(report, "labels_present").detail == "1 of 6 rows have no label"
    assert report.figures["missing_labels"] == 1.0


def test_labels_outside_known_classes_fail():
    gate = LabelGate(min_per_class=1, max_conflict_fraction=1)
    assert check_labels(_dataset(_table()), DATA, gate, known_classes=["N", "Y"]).passed
    report = check_labels(_dataset(_table()), DATA, gate, known_classes=["N", "Maybe"])
    assert [c.name for c in report.failures()] == ["known_classes"]
    assert "['Y']" in _check(report, "known_classes").detail


def test_identical_images_with_different_labels_conflict():
    images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
    images[3] = images[0]  # same pixels as image 0, other label
    images[4] = images[1]  # same pixels as image 1, same label
    dataset = Dataset("image", pd.DataFrame({"label": [0, 1, 1, 1, 1]}), "label", images)
    data = DataConfig(source="npz:x.npz", target="label")
    report = check_labels(dataset, data, LabelGate(min_per_class=1, max_conflict_fraction=0.0))
    assert report.figures["conflict_fraction"] == pytest.approx(2 / 5)
    assert [c.name for c in report.failures()] == ["max_conflict_fraction"]
