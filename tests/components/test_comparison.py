"""Challenger against champion on the same rows: McNemar, paired bootstrap, slices."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from components.comparison import (
    CANDIDATE_SPLIT,
    compare_models,
    compare_on_champion_split,
    mcnemar_test,
    paired_test,
    slice_columns,
    slice_frame,
    slice_groups,
)
from components.config import DataConfig

CLASSES = ["no", "yes"]


def _proba(pred: np.ndarray) -> np.ndarray:
    """Probability 0.8 on the predicted class of a binary task."""
    return np.where(pred[:, None] == np.arange(2), 0.8, 0.2)


def test_mcnemar_on_a_known_table() -> None:
    # 1 row only the challenger gets right, 5 only the champion: under the null the smaller
    # count is Binomial(6, 1/2). P(X <= 1) = 7/64, so exact p = 14/64; mid-p = 14/64 - 6/64.
    mid_p, exact = mcnemar_test(1, 5)
    assert exact == pytest.approx(14 / 64)
    assert exact == pytest.approx(binomtest(1, 6, 0.5).pvalue)
    assert mid_p == pytest.approx(8 / 64)
    assert mcnemar_test(5, 1) == (mid_p, exact)  # two-sided: symmetric
    assert mcnemar_test(3, 3) == pytest.approx((1.0, 1.0))
    assert mcnemar_test(0, 0) == (1.0, 1.0)


def test_paired_test_counts_and_difference() -> None:
    # 12 rows, all true class 1: both right on 5, only the challenger on 1, only the champion
    # on 5, both wrong on 1. Accuracy 6/12 vs 10/12: difference -1/3.
    y_true = np.ones(12, dtype=int)
    challenger = np.array([1] * 5 + [1] + [0] * 5 + [0])
    champion = np.array([1] * 5 + [0] + [1] * 5 + [0])
    paired = paired_test(y_true, challenger, champion, 2, n_resamples=500)
    assert (paired.both_right, paired.challenger_only, paired.champion_only, paired.both_wrong) == (5, 1, 5, 1)
    assert paired.p_value == pytest.approx(8 / 64) and paired.p_value_exact == pytest.approx(14 / 64)
    assert paired.accuracy_difference == pytest.approx(-1 / 3)
    low, high = paired.accuracy_interval
    assert low < -1 / 3 < high and high < 0.05
    assert not paired.significantly_worse(0.05) and paired.significantly_worse(0.2)
    assert "only the challenger is right on 1 row, only the champion on 5 rows" in paired.sentence()
    assert paired_test(y_true, challenger, champion, 2, n_resamples=0).accuracy_interval is None


def test_slice_frame_labels_groups() -> None:
    table = pd.DataFrame(
        {
            "sex": ["F", None, "M", "M"] * 5,
            "checks": [0.0, 1.0, 2.0, 1.0] * 5,  # few values: one group each, shown as integers
            "age": np.arange(20, 40),  # many values: quartiles
        }
    )
    frame = slice_frame(table, ["sex", "checks", "age"])
    assert sorted(frame["sex"].unique()) == ["(missing)", "F", "M"]
    assert sorted(frame["checks"].unique()) == ["0", "1", "2"]
    # Quartile edges of 20..39: 20, 24.75, 29.5, 34.25, 39; right-closed bins, first one closed.
    assert frame["age"].value_counts().to_dict() == {
        "[20, 24.75]": 5,
        "(24.75, 29.5]": 5,
        "(29.5, 34.25]": 5,
        "(34.25, 39]": 5,
    }
    with pytest.raises(ValueError, match="not in the data"):
        slice_frame(table, ["colour"])


def test_slice_columns_put_sensitive_first_without_repeats() -> None:
    data = DataConfig(source="csv:x.csv", sensitive=["sex", "colour"], slices=["age", "sex"])
    assert slice_columns(data) == ["sex", "colour", "age"]


def test_groups_and_their_intersections() -> None:
    frame = pd.DataFrame({"sex": ["F", "F", "M", "M", "M"], "colour": ["B", "W", "B", "B", "W"]})
    groups = {g.name: (g.family, g.rows.tolist()) for g in slice_groups(frame)}
    assert groups == {
        "sex=F": ("sex", [0, 1]),
        "sex=M": ("sex", [2, 3, 4]),
        "colour=B": ("colour", [0, 2, 3]),
        "colour=W": ("colour", [1, 4]),
        "sex=F & colour=B": ("sex & colour", [0]),
        "sex=F & colour=W": ("sex & colour", [1]),
        "sex=M & colour=B": ("sex & colour", [2, 3]),
        "sex=M & colour=W": ("sex & colour", [4]),
    }


@pytest.fixture
def tiny() -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """12 rows; sex F has 3 rows (too small at min size 4), M has 9."""
    y_true = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0])
    # Challenger wrong on rows 0 (F) and 3, 4 (M); champion wrong on rows 1 (F) and 3 (M).
    challenger = y_true.copy()
    challenger[[0, 3, 4]] = 1 - challenger[[0, 3, 4]]
    champion = y_true.copy()
    champion[[1, 3]] = 1 - champion[[1, 3]]
    slices = pd.DataFrame({"sex": ["F"] * 3 + ["M"] * 9})
    return y_true, challenger, champion, slices


def test_slices_by_hand_with_a_group_too_small(tiny) -> None:
    y_true, challenger, champion, slices = tiny
    report = compare_models(
        y_true, _proba(challenger), _proba(champion), CLASSES, slices, min_slice_size=4, n_resamples=200
    )
    by_group = {s.group: s for s in report.slices}
    female, male = by_group["sex=F"], by_group["sex=M"]
    assert (female.n, female.judged, male.n, male.judged) == (3, False, 9, True)
    assert female.accuracy == pytest.approx(2 / 3) and female.champion_accuracy == pytest.approx(2 / 3)
    assert male.accuracy == pytest.approx(7 / 9) and male.champion_accuracy == pytest.approx(8 / 9)
    assert male.change("accuracy") == pytest.approx(-1 / 9)
    assert female.intervals == {}  # too small: no interval either
    assert set(male.intervals) == {"accuracy", "macro_f1", "accuracy_change", "macro_f1_change"}
    assert [s.group for s in report.too_small()] == ["sex=F"]
    assert report.challenger.accuracy == pytest.approx(9 / 12)
    assert report.champion.accuracy == pytest.approx(10 / 12)
    assert report.paired.challenger_only == 1 and report.paired.champion_only == 2
    assert set(report.challenger.intervals) >= {"accuracy", "macro_f1"}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["split"] == CANDIDATE_SPLIT and data["slices"][0]["group"] == "sex=F"
    markdown = report.to_markdown()
    assert "| sex=F | 3 |" in markdown and "too small to judge (< 4 rows)" in markdown
    assert "Paired test: accuracy difference -0.0833" in markdown


def test_without_a_champion_only_the_challenger_is_measured(tiny) -> None:
    y_true, challenger, _, slices = tiny
    report = compare_models(y_true, _proba(challenger), None, CLASSES, slices, min_slice_size=4, n_resamples=0)
    assert report.champion is None and report.paired is None
    assert all(s.champion_accuracy is None and s.change("accuracy") is None for s in report.slices)
    assert report.challenger.intervals == {}
    assert "(no champion yet)" in report.to_markdown()


def test_champion_split_is_labelled_and_rows_must_match(tiny) -> None:
    y_true, challenger, champion, slices = tiny
    report = compare_on_champion_split(
        y_true, _proba(challenger), _proba(champion), CLASSES, None, data_version="abc123", n_resamples=0
    )
    assert report.split == "champion's test split (data version abc123)"
    assert report.to_markdown().startswith("### Evaluation against the champion: champion's test split")
    with pytest.raises(ValueError, match="slices has 3 rows"):
        compare_models(y_true, _proba(challenger), None, CLASSES, slices.head(3), n_resamples=0)
