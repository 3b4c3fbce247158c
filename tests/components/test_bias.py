"""Bias gate on small hand-built groups whose rates are known in advance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.bias import audit_bias
from components.config import BiasGate


def _group(n_pos: int, n_neg: int, tp: int, fp: int) -> tuple[list[int], list[int]]:
    """Labels and predictions of one group; `tp` positives and `fp` negatives are predicted 1."""
    y_true = [1] * n_pos + [0] * n_neg
    y_pred = [1] * tp + [0] * (n_pos - tp) + [1] * fp + [0] * (n_neg - fp)
    return y_true, y_pred


def _data(
    *groups: tuple[str, tuple[list[int], list[int]]],
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    y_true, y_pred, names = [], [], []
    for name, (t, p) in groups:
        y_true += t
        y_pred += p
        names += [name] * len(t)
    return np.array(y_true), np.array(y_pred), pd.DataFrame({"colour": names})


# A: 10 positives, 10 negatives; 9 TP, 7 FP -> selection 16/20 = 0.8, TPR 0.9, FPR 0.7, acc 12/20.
# B: 10 positives, 10 negatives; 6 TP, 2 FP -> selection 8/20 = 0.4, TPR 0.6, FPR 0.2, acc 14/20.
UNEQUAL = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 6, 2)))
EQUAL = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 9, 7)))


def test_unequal_selection_fails_with_ratio_one_half() -> None:
    report = audit_bias(*UNEQUAL, BiasGate(min_demographic_parity_ratio=0.8))
    assert report.status == "fail"
    check = report.checks[0]
    assert check.name == "demographic_parity_ratio(colour)"
    assert check.value == pytest.approx(0.4 / 0.8)
    assert not check.passed
    assert report.figures["dp_ratio_colour"] == pytest.approx(0.5)
    # EO difference = max(|0.9 - 0.6|, |0.7 - 0.2|) = 0.5; reported even when not checked.
    assert report.figures["eo_diff_colour"] == pytest.approx(0.5)
    assert len(report.checks) == 1


def test_group_table_holds_hand_computed_rates() -> None:
    report = audit_bias(*UNEQUAL, BiasGate())
    rows = {row["group"]: row for row in report.groups["colour"]}
    assert rows["A"] == pytest.approx(
        {
            "group": "A",
            "count": 20,
            "accuracy": 0.6,
            "selection_rate": 0.8,
            "tpr": 0.9,
            "fpr": 0.7,
            "judged": True,
        }
    )
    assert rows["B"]["selection_rate"] == pytest.approx(0.4)
    assert rows["B"]["accuracy"] == pytest.approx(0.7)
    assert rows["B"]["fpr"] == pytest.approx(0.2)
    markdown = report.to_markdown()
    assert "#### `colour` by group" in markdown
    assert "| A | 20 | 0.6000 | 0.8000 | 0.9000 | 0.7000 | yes |" in markdown
    assert report.to_dict()["groups"]["colour"][1]["group"] == "B"


def test_equalized_odds_checked_when_configured() -> None:
    gate = BiasGate(min_demographic_parity_ratio=0.4, max_equalized_odds_difference=0.3)
    report = audit_bias(*UNEQUAL, gate)
    by_name = {c.name: c for c in report.checks}
    assert by_name["demographic_parity_ratio(colour)"].passed
    eo = by_name["equalized_odds_difference(colour)"]
    assert eo.value == pytest.approx(0.5)
    assert not eo.passed


def test_equal_rates_pass() -> None:
    report = audit_bias(*EQUAL, BiasGate(min_demographic_parity_ratio=0.8, max_equalized_odds_difference=0.1))
    assert report.status == "pass"
    assert report.figures == pytest.approx({"dp_ratio_colour": 1.0, "eo_diff_colour": 0.0})


def test_tiny_group_is_reported_not_judged() -> None:
    # C has 5 rows and never gets selected: judged, it would drive the ratio to 0.
    y_true, y_pred, frame = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 9, 7)), ("C", _group(3, 2, 0, 0)))
    report = audit_bias(y_true, y_pred, frame, BiasGate(min_demographic_parity_ratio=0.8))
    assert report.passed
    assert "too small to judge" in report.checks[0].detail
    assert "C (5)" in report.checks[0].detail
    rows = {row["group"]: row for row in report.groups["colour"]}
    assert rows["C"]["judged"] is False
    assert rows["C"]["selection_rate"] == 0.0


def test_fewer_than_two_judgeable_groups_fails_closed() -> None:
    y_true, y_pred, frame = _data(("A", _group(10, 10, 9, 7)), ("C", _group(3, 2, 0, 0)))
    report = audit_bias(y_true, y_pred, frame, BiasGate())
    assert report.status == "fail"
    assert "cannot be judged" in report.checks[0].detail


def test_no_sensitive_columns_is_not_applicable() -> None:
    y_true, y_pred, _ = UNEQUAL
    report = audit_bias(y_true, y_pred, pd.DataFrame(index=range(len(y_true))), BiasGate())
    assert report.status == "not_applicable"
    assert report.passed


def test_missing_threshold_fails_closed() -> None:
    report = audit_bias(*EQUAL, BiasGate(min_demographic_parity_ratio=None))
    assert report.status == "fail"
    assert "no threshold configured" in report.checks[0].detail
    assert report.figures["dp_ratio_colour"] == pytest.approx(1.0)


def test_multiclass_is_not_applicable() -> None:
    frame = pd.DataFrame({"colour": ["A", "B", "A"]})
    report = audit_bias(np.array([0, 1, 2]), np.array([0, 2, 1]), frame, BiasGate())
    assert report.status == "not_applicable"
    assert [(c.name, c.detail) for c in report.checks] == [("multiclass", "bias audit covers binary classifiers only")]


def test_positive_class_can_be_zero() -> None:
    # With 0 as the selected outcome, A selects 4/20 = 0.2 and B 12/20 = 0.6: ratio 1/3.
    report = audit_bias(*UNEQUAL, BiasGate(), positive=0)
    assert report.figures["dp_ratio_colour"] == pytest.approx(0.2 / 0.6)


def test_missing_group_membership_is_its_own_group() -> None:
    y_true, y_pred, frame = EQUAL
    frame = frame.assign(sex=["F", None] * 20)
    report = audit_bias(y_true, y_pred, frame, BiasGate())
    assert {row["group"] for row in report.groups["sex"]} == {"F", "(missing)"}
    assert [c.name for c in report.checks] == [
        "demographic_parity_ratio(colour)",
        "demographic_parity_ratio(sex)",
    ]
