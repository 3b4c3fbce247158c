"""Seeded percentile bootstrap of classification metrics, vectorised over the resamples.

A resample draws the n evaluated rows with replacement; :func:`resample_indices` yields many
resamples at once as an integer array (resamples x n). A metric is then computed for every
resample together: :func:`confusion_stack` turns the resampled labels and predictions into one
confusion matrix per resample with a single ``np.bincount``, and :func:`accuracy_macro_f1`
reads both figures off the stack. Two models scored on the same rows are resampled with the
same indices, which is what a paired bootstrap of their difference needs.

The resamples are drawn in chunks of bounded memory (about 1 MB of indices whatever the
number of rows); the chunking depends on n only, so a given `(n, n_resamples, seed)` always
yields the same resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0
# Resamples x rows of indices drawn at once (int64): about 1 MB. Small chunks stay in cache
# and reuse freed memory; 32 MB chunks ran twice as slow, mostly on fresh page faults.
_CHUNK_CELLS = 131_072

Statistic = Callable[[np.ndarray], dict[str, np.ndarray]]


def resample_indices(n: int, n_resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """Row indices of bootstrap resamples of `n` rows, in chunks.

    Args:
        n: Number of rows (at least 1).
        n_resamples: Total number of resamples.
        seed: Seed of the random generator.

    Yields:
        Integer arrays of shape (chunk, n), values in 0..n-1; the chunks add up to `n_resamples`.
    """
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_resamples:
        size = min(per_chunk, n_resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def bootstrap(n: int, statistic: Statistic, n_resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, np.ndarray]:
    """The values of `statistic` over bootstrap resamples of `n` rows.

    Args:
        n: Number of rows.
        statistic: Maps resampled row indices (chunk, n) to named arrays of shape (chunk,).
        n_resamples: Number of resamples (at least 1).
        seed: Seed of the resampling.

    Returns:
        Name -> array of shape (n_resamples,).
    """
    parts = [statistic(rows) for rows in resample_indices(n, n_resamples, seed)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """The central `confidence` percentile interval of bootstrap samples (NaNs left out).

    Returns:
        [low, high], or None when fewer than half the samples are defined (e.g. an AUC on
        resamples that mostly lack a class).
    """
    defined = samples[~np.isnan(samples)]
    if len(defined) == 0 or len(defined) < len(samples) / 2:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail])
    return [float(low), float(high)]


def _resample_codes(rows: np.ndarray, code: np.ndarray, n_codes: int) -> np.ndarray:
    # Counts of each per-row code in each resample: one bincount over resample-offset codes.
    b = rows.shape[0]
    offset = (np.arange(b, dtype=np.int64) * n_codes)[:, None]
    return np.bincount((code[rows] + offset).ravel(), minlength=b * n_codes).reshape(b, n_codes)


def confusion_stack(rows: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """One confusion matrix per resample.

    Args:
        rows: Resampled row indices, shape (b, n); `np.arange(n)[None]` for the rows as they are.
        y_true: True class indices, shape (n,).
        y_pred: Predicted class indices, shape (n,).
        n_classes: Number of classes k.

    Returns:
        Counts of shape (b, k, k): [resample, true class, predicted class].
    """
    k = n_classes
    code = y_true.astype(np.int64) * k + y_pred  # each row's cell of the confusion matrix
    return _resample_codes(rows, code, k * k).reshape(-1, k, k)


def paired_confusion_stacks(
    rows: np.ndarray, y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The confusion stacks of two models on the same resampled rows.

    With few classes both come from one count of the (true, a, b) triples, which halves the
    work of two :func:`confusion_stack` calls.

    Returns:
        Two count arrays of shape (b, k, k), for model a and model b.
    """
    k = n_classes
    if k**3 > 1000:  # past 10 classes the joint table outgrows two separate ones
        return confusion_stack(rows, y_true, pred_a, k), confusion_stack(rows, y_true, pred_b, k)
    code = (y_true.astype(np.int64) * k + pred_a) * k + pred_b
    joint = _resample_codes(rows, code, k**3).reshape(-1, k, k, k)
    return joint.sum(axis=3), joint.sum(axis=2)


def accuracy_macro_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of each confusion matrix of a stack.

    Macro-F1 averages over the classes present in the labels or the predictions, as sklearn's
    default does (a class absent from both is not charged an F1 of 0).

    Args:
        confusion: Counts of shape (b, k, k), rows = true class.

    Returns:
        Accuracy and macro-F1, each of shape (b,).
    """
    hits = np.diagonal(confusion, axis1=1, axis2=2).astype(float)
    seen = (confusion.sum(axis=2) + confusion.sum(axis=1)).astype(float)  # support + predicted
    present = seen > 0
    accuracy = hits.sum(axis=1) / confusion.sum(axis=(1, 2))
    f1 = np.divide(2 * hits, seen, out=np.zeros_like(hits), where=present)
    return accuracy, f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def resampled_roc_auc(rows: np.ndarray, scores: np.ndarray, is_positive: np.ndarray) -> np.ndarray:
    """Binary ROC-AUC of each resample (tied scores count one half).

    The distinct scores are ranked once. Per resample, one count gives the positives and the
    negatives drawn at each distinct score; a positive then scores the negatives ranked below
    it, plus half of those tied with it.

    Args:
        rows: Resampled row indices, shape (b, n).
        scores: Score of the positive class, shape (n,).
        is_positive: True for rows of the positive class, shape (n,).

    Returns:
        AUC per resample, shape (b,); NaN where a resample lacks a class.
    """
    levels, level = np.unique(scores, return_inverse=True)
    code = level.astype(np.int64) * 2 + is_positive  # (distinct score, class) of each row
    counts = _resample_codes(rows, code, 2 * len(levels)).reshape(len(rows), len(levels), 2)
    negative, positive = counts[:, :, 0], counts[:, :, 1]
    below = np.cumsum(negative, axis=1) - negative
    right = (positive * (below + 0.5 * negative)).sum(axis=1)
    pairs = positive.sum(axis=1) * negative.sum(axis=1).astype(float)
    return np.divide(right, pairs, out=np.full(len(pairs), np.nan), where=pairs > 0)
