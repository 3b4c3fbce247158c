"""Label gate: counts, domain, balance, conflicts, annotator agreement and leakage, against hand counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, LabelGate
from components.dataset import Dataset
from components.labels import annotator_agreement, check_labels, conflict_fraction, fleiss_kappa, leakage
from components.split import SplitIndices

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
        "imbalance_ratio": 1.0,
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


# --- class balance -------------------------------------------------------------------------


def test_imbalance_ratio_is_largest_over_smallest_class():
    table = _table()
    table.loc[4, "y"] = "Y"  # 4 Y, 2 N: ratio 2
    data = _dataset(table)
    report = check_labels(data, DATA, LabelGate(min_per_class=1, max_conflict_fraction=1, max_imbalance_ratio=1.5))
    assert report.figures["imbalance_ratio"] == 2.0
    assert [c.name for c in report.failures()] == ["max_imbalance_ratio"]
    assert check_labels(data, DATA, LabelGate(min_per_class=1, max_conflict_fraction=1, max_imbalance_ratio=2)).passed


def test_imbalance_is_not_checked_without_a_ceiling():
    report = check_labels(_dataset(_table()), DATA, LabelGate(min_per_class=1, max_conflict_fraction=1))
    assert "max_imbalance_ratio" not in [c.name for c in report.checks]


# --- annotator agreement -------------------------------------------------------------------

# Two annotators agree on 8 of 10 items; each says Y on 5: p_o = 0.8, p_e = 0.5*0.5 + 0.5*0.5
# = 0.5, so Cohen's kappa = (0.8 - 0.5) / (1 - 0.5) = 0.6.
COHEN = pd.DataFrame(
    {
        "a1": list("YYYYYNNNNN"),
        "a2": list("YYYYNNNNNY"),
        "x": range(10),
        "y": list("YYYYYNNNNN"),
    }
)

# Three raters, four items: AAA, AAB, BBB, ABB. Per-item agreement 1, 1/3, 1, 1/3 (mean 2/3);
# A and B each take half of the 12 ratings, so chance agreement is 1/2:
# Fleiss' kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3.
FLEISS = pd.DataFrame({"r1": list("AABA"), "r2": list("AABB"), "r3": list("ABBB"), "x": range(4), "y": list("AABB")})


def test_fleiss_kappa_matches_the_wikipedia_example():
    # https://en.wikipedia.org/wiki/Fleiss%27_kappa: 10 subjects, 14 raters, 5 categories;
    # P = 0.378, Pe = 0.213, kappa = 0.210.
    counts = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert fleiss_kappa(counts) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_kappa_of_raw_ratings_by_hand():
    assert annotator_agreement(FLEISS, ["r1", "r2", "r3"]) == ("fleiss_kappa", pytest.approx(1 / 3), 4)


def test_fleiss_kappa_is_undefined_when_every_rating_is_one_category():
    assert np.isnan(fleiss_kappa(np.array([[3, 0], [3, 0]])))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[3, 0], [1, 1]]))


def test_cohen_kappa_is_reported_without_a_floor():
    data = DataConfig(source="csv:x.csv", target="y", annotators=["a1", "a2"], features=["x"])
    report = check_labels(_dataset(COHEN), data, LabelGate(min_per_class=1))
    assert report.passed, report.headline()
    assert report.figures["annotator_agreement"] == pytest.approx(0.6)
    assert "reported, not gated" in _check(report, "min_annotator_agreement").detail


def test_agreement_below_the_floor_fails():
    data = DataConfig(source="csv:x.csv", target="y", annotators=["r1", "r2", "r3"], features=["x"])
    dataset = _dataset(FLEISS)
    assert check_labels(dataset, data, LabelGate(min_per_class=1, min_annotator_agreement=0.3)).passed
    report = check_labels(dataset, data, LabelGate(min_per_class=1, min_annotator_agreement=0.4))
    assert [c.name for c in report.failures()] == ["min_annotator_agreement"]


def test_rows_missing_an_annotator_are_left_out():
    table = pd.concat([COHEN, pd.DataFrame({"a1": ["Y"], "a2": [None], "x": [10], "y": ["Y"]})])
    assert annotator_agreement(table, ["a1", "a2"]) == ("cohen_kappa", pytest.approx(0.6), 10)


def test_missing_annotator_column_fails():
    data = DataConfig(source="csv:x.csv", target="y", annotators=["a1", "a9"], features=["x"])
    report = check_labels(_dataset(COHEN), data, LabelGate(min_per_class=1))
    assert [c.name for c in report.failures()] == ["min_annotator_agreement"]
    assert "['a9']" in _check(report, "min_annotator_agreement").detail


def test_a_single_annotator_is_not_an_agreement():
    data = DataConfig(source="csv:x.csv", target="y", annotators=["a1"], features=["x"])
    report = check_labels(_dataset(COHEN), data, LabelGate(min_per_class=1))
    assert "annotator_agreement" not in report.figures


# --- leakage -------------------------------------------------------------------------------


def test_leakage_fraction_by_hand():
    # train rows 0-2, test rows 3-5. Row 3 repeats row 0's features; row 4 repeats row 2's but
    # for sex, which is not a feature; row 5 repeats a validation row only: 2 of 3 test rows leak.
    table = pd.DataFrame(
        {
            "x1": [1, 2, 3, 1, 3, 7, 7],
            "x2": ["a", "b", "c", "a", "c", "z", "z"],
            "sex": ["F", "M", "F", "M", "M", "F", "F"],
            "y": ["Y", "N", "Y", "N", "Y", "N", "N"],
        }
    )
    split = SplitIndices(train=np.array([0, 1, 2]), val=np.array([6]), test=np.array([3, 4, 5]))
    check = leakage(_dataset(table), DATA, split, LabelGate(max_leakage_fraction=0.5))
    assert (check.name, check.passed, check.value) == ("max_leakage_fraction", False, pytest.approx(2 / 3))
    assert leakage(_dataset(table), DATA, split, LabelGate(max_leakage_fraction=0.7)).passed


def test_leakage_of_images_compares_raw_bytes():
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    images[3] = images[1]
    dataset = Dataset("image", pd.DataFrame({"label": [0, 1, 0, 1]}), "label", images)
    split = SplitIndices(train=np.array([0, 1]), val=np.array([], dtype=int), test=np.array([2, 3]))
    check = leakage(dataset, DataConfig(source="npz:x.npz", target="label"), split)
    assert check.value == pytest.approx(0.5)
    assert not check.passed  # the default ceiling is 0
