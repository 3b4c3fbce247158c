"""Vectorised bootstrap: figures per resample match sklearn, intervals cover the truth."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from components.bootstrap import (
    accuracy_macro_f1,
    bootstrap,
    confusion_stack,
    paired_confusion_stacks,
    percentile_interval,
    resample_indices,
    resampled_roc_auc,
)

# 8 rows, 3 classes: confusion [[2, 1, 0], [0, 2, 1], [1, 0, 1]], accuracy 5/8, macro-F1 11/18.
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 2, 2, 0])


def test_confusion_and_figures_of_the_rows_as_they_are() -> None:
    identity = np.arange(len(Y_TRUE))[None]
    confusion = confusion_stack(identity, Y_TRUE, Y_PRED, 3)
    assert confusion.tolist() == [[[2, 1, 0], [0, 2, 1], [1, 0, 1]]]
    accuracy, macro_f1 = accuracy_macro_f1(confusion)
    assert accuracy[0] == pytest.approx(5 / 8)
    assert macro_f1[0] == pytest.approx(11 / 18)


def test_every_resample_matches_sklearn_on_the_resampled_rows() -> None:
    rows = next(resample_indices(len(Y_TRUE), 20, seed=3))
    accuracy, macro_f1 = accuracy_macro_f1(confusion_stack(rows, Y_TRUE, Y_PRED, 3))
    for i, drawn in enumerate(rows):
        truth, pred = Y_TRUE[drawn], Y_PRED[drawn]
        assert accuracy[i] == pytest.approx(skm.accuracy_score(truth, pred))
        # sklearn's default label set: classes present in labels or predictions.
        assert macro_f1[i] == pytest.approx(skm.f1_score(truth, pred, average="macro", zero_division=0))


def test_paired_stacks_equal_two_separate_ones() -> None:
    other = np.array([0, 1, 1, 1, 0, 2, 2, 2])
    rows = next(resample_indices(len(Y_TRUE), 10, seed=1))
    mine, theirs = paired_confusion_stacks(rows, Y_TRUE, Y_PRED, other, 3)
    assert (mine == confusion_stack(rows, Y_TRUE, Y_PRED, 3)).all()
    assert (theirs == confusion_stack(rows, Y_TRUE, other, 3)).all()


def test_resampled_auc_matches_sklearn_with_ties() -> None:
    scores = np.array([0.1, 0.4, 0.4, 0.35, 0.8, 0.4, 0.9, 0.1])
    positive = np.array([False, False, True, True, True, False, True, True])
    rows = next(resample_indices(len(scores), 30, seed=0))
    auc = resampled_roc_auc(rows, scores, positive)
    for i, drawn in enumerate(rows):
        if len(set(positive[drawn])) < 2:
            assert np.isnan(auc[i])
        else:
            assert auc[i] == pytest.approx(skm.roc_auc_score(positive[drawn], scores[drawn]))


def test_resamples_are_seeded_and_counted_in_chunks() -> None:
    first = np.concatenate(list(resample_indices(100_000, 5, seed=7)))
    again = np.concatenate(list(resample_indices(100_000, 5, seed=7)))
    assert first.shape == (5, 100_000)  # one row per chunk here (100,000 rows fill a chunk)
    assert (first == again).all()
    assert not (first == np.concatenate(list(resample_indices(100_000, 5, seed=8)))).all()


def test_interval_of_a_known_accuracy_covers_it_with_the_normal_width() -> None:
    # 400 rows, 320 right: accuracy 0.8, standard error sqrt(0.8 * 0.2 / 400) = 0.02, so a 95%
    # interval is about 0.8 +- 0.039 (width 0.078).
    right = np.r_[np.ones(320, dtype=int), np.zeros(80, dtype=int)]
    truth = np.ones(400, dtype=int)

    def accuracy(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"accuracy": accuracy_macro_f1(confusion_stack(rows, truth, right, 2))[0]}

    samples = bootstrap(400, accuracy, 1000, seed=0)["accuracy"]
    low, high = percentile_interval(samples)
    assert low < 0.8 < high
    assert high - low == pytest.approx(0.078, abs=0.012)
    assert percentile_interval(bootstrap(400, accuracy, 1000, seed=0)["accuracy"]) == [low, high]


def test_interval_is_none_when_mostly_undefined() -> None:
    assert percentile_interval(np.array([np.nan, np.nan, 0.5])) is None
    assert percentile_interval(np.array([0.2, 0.4, np.nan]), confidence=0.5) == pytest.approx([0.25, 0.35])
