"""Drift of a new data version against the reference: PSI plus a significance test per feature.

A feature drifts only when two figures agree: its population stability index (PSI) exceeds
`gates.drift.psi_threshold` AND a two-sample test (Kolmogorov-Smirnov for numbers, chi-square
for categories) puts its p-value below the configured floor. PSI alone raises false alarms on
small samples; a test alone flags negligible shifts on big ones (with a million rows any
difference is significant). The label distribution is judged by PSI alone.

PSI = sum over buckets of (c - r) * ln(c / r), where r and c are the reference and current
shares of a bucket. Rule of thumb: below 0.1 stable, 0.1 to 0.25 moderate, above 0.25 shifted.

Columns missing from either side, empty, or of a changed type are not judged here: the
validation gate reports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, ks_2samp

from components.config import DataConfig, DriftGate
from components.dataset import Dataset, feature_columns
from components.gates import Check, GateReport

# The share given to a bucket that is empty in one sample, so that ln(c / r) stays finite.
# One row in ten thousand: a bucket with share s on one side and none on the other then adds
# about s * ln(s / 1e-4) (s = 0.1 -> 0.69), enough to raise the alarm yet never infinite.
# Shares are not renormalised after flooring; a bucket empty on both sides adds exactly 0.
PSI_EPSILON = 1e-4
# Quantile buckets per numeric feature in the gate: the customary ten (deciles).
PSI_BINS = 10

Kind: TypeAlias = Literal["numeric", "categorical"]
ArrayLike: TypeAlias = np.ndarray | pd.Series | Sequence[object]


@dataclass(frozen=True)
class _FeatureDrift:
    """The figures of one compared feature."""

    feature: str
    kind: Kind
    psi: float
    pvalue: float
    change: str  # the change in words, e.g. "mean 29.1 -> 41.3" or "White 80% -> 40%"


def _psi_from_counts(reference: np.ndarray, current: np.ndarray) -> float:
    r = np.maximum(reference / reference.sum(), PSI_EPSILON)
    c = np.maximum(current / current.sum(), PSI_EPSILON)
    return float(np.sum((c - r) * np.log(c / r)))


def _sorted_finite(values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype="float64").ravel()
    return np.sort(array[np.isfinite(array)])


def _require_values(reference_size: int, current_size: int) -> None:
    if reference_size == 0 or current_size == 0:
        raise ValueError("PSI needs at least one non-null value in each sample")


def _bucket_edges(sorted_reference: np.ndarray, bins: int) -> np.ndarray:
    """Lower edges of the buckets (a bucket holds lower <= v < next lower).

    Quantile buckets of the reference, framed by two buckets that are empty in the reference:
    below its minimum and above its maximum. They catch values outside the range seen, and a
    shift of a constant column, which quantiles alone (a single bucket) would miss. Tied
    quantiles collapse into one bucket.
    """
    quantiles = np.quantile(sorted_reference, np.linspace(0.0, 1.0, bins + 1))
    above_max = np.nextafter(quantiles[-1], np.inf)
    return np.unique(np.append(quantiles[:-1], above_max))


def _bucket_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # On a sorted sample the edges' positions give the counts: O(bins log n), not O(n).
    cuts = np.searchsorted(sorted_values, edges, side="left")
    return np.diff(np.concatenate(([0], cuts, [len(sorted_values)])))


def _numeric_psi(sorted_reference: np.ndarray, sorted_current: np.ndarray, bins: int) -> float:
    edges = _bucket_edges(sorted_reference, bins)
    return _psi_from_counts(_bucket_counts(sorted_reference, edges), _bucket_counts(sorted_current, edges))


def psi(reference: ArrayLike, current: ArrayLike, bins: int = PSI_BINS) -> float:
    """Population stability index of a numeric feature.

    Buckets are the reference's quantiles (`bins` of them, fewer where quantiles tie) plus one
    bucket below the reference minimum and one above its maximum. A bucket empty on one side
    gets the share :data:`PSI_EPSILON` (1e-4). NaN and infinite values are ignored.

    Args:
        reference: Values of the reference data.
        current: Values of the new data.
        bins: Number of quantile buckets.

    Returns:
        sum((c - r) * ln(c / r)) over the buckets; 0 for identical samples.

    Raises:
        ValueError: `bins` < 1, or a sample without finite values.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    ref, cur = _sorted_finite(reference), _sorted_finite(current)
    _require_values(len(ref), len(cur))
    return _numeric_psi(ref, cur, bins)


def _category_counts(reference: ArrayLike, current: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The categories seen in either sample and their counts on each side (nulls dropped)."""
    ref, cur = pd.Series(reference), pd.Series(current)
    # One factorize over both: every category, unseen ones included, gets its own bucket.
    codes, categories = pd.factorize(pd.concat([ref, cur], ignore_index=True))
    ref_codes, cur_codes = codes[: len(ref)], codes[len(ref) :]
    ref_counts = np.bincount(ref_codes[ref_codes >= 0], minlength=len(categories))
    cur_counts = np.bincount(cur_codes[cur_codes >= 0], minlength=len(categories))
    return np.asarray(categories, dtype=object), ref_counts, cur_counts


def psi_categorical(reference: ArrayLike, current: ArrayLike) -> float:
    """Population stability index of a categorical feature (or of labels).

    One bucket per category seen in either sample: a category new in `current` has its own
    bucket with reference share :data:`PSI_EPSILON`, and so has one that disappeared. Nulls are
    ignored.

    Args:
        reference: Values of the reference data.
        current: Values of the new data.

    Raises:
        ValueError: A sample without non-null values.
    """
    _, ref_counts, cur_counts = _category_counts(reference, current)
    _require_values(int(ref_counts.sum()), int(cur_counts.sum()))
    return _psi_from_counts(ref_counts, cur_counts)


def _largest_share_change(categories: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray) -> str:
    r, c = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    top = int(np.argmax(np.abs(c - r)))
    return f"{categories[top]} {r[top]:.0%} -> {c[top]:.0%}"


def _compare_numeric(name: str, reference: pd.Series, current: pd.Series) -> _FeatureDrift | None:
    ref = _sorted_finite(reference.to_numpy(dtype="float64", na_value=np.nan))
    cur = _sorted_finite(current.to_numpy(dtype="float64", na_value=np.nan))
    if len(ref) == 0 or len(cur) == 0:
        return None
    pvalue = float(ks_2samp(ref, cur).pvalue)
    change = f"mean {ref.mean():.3g} -> {cur.mean():.3g}"
    return _FeatureDrift(name, "numeric", _numeric_psi(ref, cur, PSI_BINS), pvalue, change)


def _compare_categorical(name: str, reference: pd.Series, current: pd.Series) -> _FeatureDrift | None:
    categories, ref_counts, cur_counts = _category_counts(reference, current)
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return None
    # A single category on both sides leaves nothing to test (and chi-square has 0 dof).
    pvalue = 1.0 if len(categories) < 2 else float(chi2_contingency(np.vstack([ref_counts, cur_counts])).pvalue)
    change = _largest_share_change(categories, ref_counts, cur_counts)
    return _FeatureDrift(name, "categorical", _psi_from_counts(ref_counts, cur_counts), pvalue, change)


def _kind(series: pd.Series) -> Kind | None:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return None
    return "categorical"  # text (pandas 3 `str`), category and object columns


def _feature_check(drift: _FeatureDrift, gate: DriftGate) -> Check:
    test, floor = ("KS", gate.ks_pvalue) if drift.kind == "numeric" else ("chi-square", gate.chi2_pvalue)
    big, significant = drift.psi > gate.psi_threshold, drift.pvalue < floor
    psi_text = f"PSI {drift.psi:.2f} {'>' if big else '<='} {gate.psi_threshold:g}"
    p_text = f"{test} p {drift.pvalue:.2g} {'<' if significant else '>='} {floor:g}"
    if big and significant:
        verdict = f"{psi_text} and {p_text}: distribution shifted"
    elif big:
        verdict = f"{psi_text} but {p_text}: not significant, treated as stable"
    elif significant:
        verdict = f"{psi_text} ({p_text}): shift too small to matter"
    else:
        verdict = f"{psi_text}: stable"
    detail = f"{drift.feature}: {verdict} ({drift.change})"
    return Check(
        f"drift({drift.feature})",
        not (big and significant),
        detail,
        drift.psi,
        gate.psi_threshold,
        gate.feature_action,
    )


def _skipped(name: str, reason: str) -> Check:
    # Recorded (and passed) so that the report says which features were not judged, and why.
    return Check(f"drift({name})", True, f"{name}: not compared ({reason}; left to validation)", severity="warn")


def _image_stats(dataset: Dataset) -> pd.DataFrame:
    """Per-image pixel mean and standard deviation: what brightening or contrast changes move."""
    if dataset.images is None:
        raise ValueError("an image dataset needs its images to be compared for drift")
    flat = dataset.images.reshape(len(dataset.images), -1)
    return pd.DataFrame(
        {"pixel_mean": flat.mean(axis=1, dtype="float64"), "pixel_std": flat.std(axis=1, dtype="float64")}
    )


def _feature_tables(reference: Dataset, current: Dataset, data: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    if current.modality == "image":
        return _image_stats(reference), _image_stats(current)
    shared = set(reference.table.columns) & set(current.table.columns)
    # The time column moves on by design (a new period is what new data is): never drift.
    columns = [c for c in feature_columns(data, current.table) if c in shared and c != data.time]
    return reference.table[columns], current.table[columns]


def _compare_feature(name: str, reference: pd.Series, current: pd.Series) -> _FeatureDrift | str:
    """The feature's drift figures, or why it cannot be compared."""
    kind, current_kind = _kind(reference), _kind(current)
    if kind is None:
        return "date/time column"
    if kind != current_kind:
        return f"type changed from {reference.dtype} to {current.dtype}"
    compare = _compare_numeric if kind == "numeric" else _compare_categorical
    drift = compare(name, reference, current)
    return "no values on one side" if drift is None else drift


def _label_check(reference: Dataset, current: Dataset, gate: DriftGate) -> tuple[Check, float] | None:
    if reference.target not in reference.table or current.target not in current.table:
        return None
    categories, ref_counts, cur_counts = _category_counts(reference.labels, current.labels)
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return None
    value = _psi_from_counts(ref_counts, cur_counts)
    passed = value <= gate.label_psi_threshold
    change = _largest_share_change(categories, ref_counts, cur_counts)
    verdict = "stable" if passed else "shifted"
    relation = "<=" if passed else ">"
    detail = f"label distribution {verdict}: PSI {value:.2f} {relation} {gate.label_psi_threshold:g} ({change})"
    return Check("label_drift", passed, detail, value, gate.label_psi_threshold, gate.label_action), value


def detect_drift(reference: Dataset, current: Dataset, data: DataConfig, gate: DriftGate) -> GateReport:
    """Compare a new data version with the reference, feature by feature and for the label.

    Features are the model's input columns present in both tables (tabular) or the per-image
    pixel mean and standard deviation (images). A numeric feature is judged by PSI and the
    two-sample KS test, a categorical one by PSI and the chi-square test of the 2 x k count
    table; it drifts when PSI > `psi_threshold` and the p-value is below its floor. The label
    drifts when the PSI of its class shares exceeds `label_psi_threshold`.

    Args:
        reference: The data the champion was trained on.
        current: The new data version.
        data: The pipeline's data section (which columns are features).
        gate: Thresholds and, per kind of check, whether a drift warns or fails.

    Returns:
        Gate `drift`, with one check per feature (`drift(<feature>)`, severity
        `gate.feature_action`) and `label_drift` (severity `gate.label_action`); figures
        `drifted_features`, `label_psi` and `psi.<feature>` for every feature compared.
    """
    ref_table, cur_table = _feature_tables(reference, current, data)
    checks: list[Check] = []
    psis: dict[str, float] = {}
    for name in ref_table.columns:
        outcome = _compare_feature(name, ref_table[name], cur_table[name])
        if isinstance(outcome, str):
            checks.append(_skipped(name, outcome))
            continue
        checks.append(_feature_check(outcome, gate))
        psis[f"psi.{name}"] = outcome.psi
    drifted = sum(1 for c in checks if not c.passed)
    figures: dict[str, float] = {"drifted_features": float(drifted)}
    label = _label_check(reference, current, gate)
    if label is not None:
        checks.append(label[0])
        figures["label_psi"] = label[1]
    figures.update(psis)
    return GateReport("drift", checks, figures=figures)
