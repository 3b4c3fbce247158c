"""Drift gate: PSI against hand-computed values, then known shifts flagged and resamples not."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, DriftGate
from components.dataset import Dataset
from components.drift import PSI_EPSILON, detect_drift, psi, psi_categorical

DATA = DataConfig(source="csv:people.csv", target="label", id="id", sensitive=["colour"])
IMAGES = DataConfig(source="npz:digits.npz")
GATE = DriftGate()  # psi 0.25, KS/chi-square p 0.001, label psi 0.1; features warn, label fails


def _psi_by_hand(reference_shares: list[float], current_shares: list[float]) -> float:
    return sum((c - r) * math.log(c / r) for r, c in zip(reference_shares, current_shares, strict=True))


def _tabular(**columns: object) -> Dataset:
    table = pd.DataFrame(columns)
    if "label" not in table:
        table["label"] = ["Yes", "No"] * (len(table) // 2)
    return Dataset("tabular", table, "label")


def _check(report, name: str):
    return next(c for c in report.checks if c.name == name)


# --- psi / psi_categorical ------------------------------------------------------------------


def test_psi_of_identical_samples_is_zero() -> None:
    values = np.random.default_rng(0).normal(size=50)
    assert psi(values, values) == 0.0
    assert psi_categorical(["a", "b", "b", "c"], ["a", "b", "b", "c"]) == 0.0


def test_psi_of_a_two_bin_example_matches_the_formula() -> None:
    # Reference median 2.5 splits it into [1, 2.5) with 1, 2 and [2.5, 4] with 3, 4: shares 1/2, 1/2.
    # The current sample puts 1, 1, 1 in the first bucket and 4 in the second: shares 3/4, 1/4.
    expected = _psi_by_hand([0.5, 0.5], [0.75, 0.25])
    assert expected == pytest.approx(0.25 * math.log(3))
    assert psi([1, 2, 3, 4], [1, 1, 1, 4], bins=2) == pytest.approx(expected)


def test_psi_ignores_missing_values() -> None:
    assert psi([1.0, 2.0, np.nan, 3.0], [1.0, 2.0, 3.0, np.nan]) == 0.0


def test_values_outside_the_reference_range_count_even_for_a_constant_column() -> None:
    # A constant 5 -> constant 6 lands in the "above the reference maximum" bucket, empty in the
    # reference: both sides swap a full bucket for an epsilon one.
    expected = _psi_by_hand([PSI_EPSILON, 1.0], [1.0, PSI_EPSILON])
    assert psi([5.0] * 10, [6.0] * 10) == pytest.approx(expected)
    assert psi([5.0] * 10, [4.0] * 10) == pytest.approx(expected)


def test_psi_categorical_gives_an_unseen_category_its_own_bucket() -> None:
    # a, b: 1/2 each -> 1/4 each; c: unseen in the reference (epsilon) -> 1/2.
    expected = _psi_by_hand([0.5, 0.5, PSI_EPSILON], [0.25, 0.25, 0.5])
    assert psi_categorical(["a", "a", "b", "b"], ["a", "b", "c", "c"]) == pytest.approx(expected)


def test_psi_refuses_a_sample_without_values() -> None:
    with pytest.raises(ValueError, match="at least one"):
        psi([1.0, 2.0], [np.nan])
    with pytest.raises(ValueError, match="at least one"):
        psi_categorical([None, None], ["a"])


# --- numeric features -----------------------------------------------------------------------


def _normal(seed: int, mean: float = 0.0, n: int = 2000) -> Dataset:
    return _tabular(x=np.random.default_rng(seed).normal(mean, 1.0, n))


def test_a_mean_shift_of_one_sd_is_flagged() -> None:
    report = detect_drift(_normal(0), _normal(1, mean=1.0), DATA, GATE)
    check = _check(report, "drift(x)")
    assert not check.passed and check.severity == "warn"
    assert check.value is not None and check.value > 0.25
    assert "KS p" in check.detail and "distribution shifted" in check.detail and "mean" in check.detail
    assert report.figures["drifted_features"] == 1
    assert report.figures["psi.x"] == check.value


def test_resamples_of_the_same_distribution_raise_no_alarm() -> None:
    reference = _normal(0)
    alarms = [seed for seed in range(1, 21) if detect_drift(reference, _normal(seed), DATA, GATE).warnings()]
    assert alarms == []


def test_a_significant_but_tiny_shift_on_a_big_sample_is_not_drift() -> None:
    rng = np.random.default_rng(3)
    reference = _tabular(x=rng.normal(0.0, 1.0, 200_000))
    current = _tabular(x=rng.normal(0.05, 1.0, 200_000))
    check = _check(detect_drift(reference, current, DATA, GATE), "drift(x)")
    assert check.passed and "too small to matter" in check.detail


def test_a_big_psi_on_a_tiny_sample_is_not_significant() -> None:
    # 6 against 6 rows: even fully separated samples give a KS p-value of 2/924 > 0.001.
    check = _check(
        detect_drift(_tabular(x=[1, 2, 3, 4, 5, 6]), _tabular(x=[7, 8, 9, 10, 11, 12]), DATA, GATE), "drift(x)"
    )
    assert check.value is not None and check.value > 0.25
    assert check.passed and "not significant" in check.detail


# --- categorical features and severity ------------------------------------------------------


def test_a_categorical_shift_is_flagged_with_the_biggest_change_named() -> None:
    reference = _tabular(region=["North"] * 40 + ["South"] * 10 + ["East"] * 10)
    current = _tabular(region=["North"] * 10 + ["South"] * 30 + ["East"] * 20)
    check = _check(detect_drift(reference, current, DATA, GATE), "drift(region)")
    assert check.value == pytest.approx(_psi_by_hand([40 / 60, 10 / 60, 10 / 60], [10 / 60, 30 / 60, 20 / 60]))
    # Chi-square by hand: expected counts 25, 20, 15 per row; 2 dof, so p = exp(-chi2 / 2).
    chi2 = 2 * (15**2 / 25 + 10**2 / 20 + 5**2 / 15)  # 31.33
    assert f"chi-square p {math.exp(-chi2 / 2):.2g} < 0.001" in check.detail
    assert not check.passed and check.detail.endswith("distribution shifted (North 67% -> 17%)")


def test_warn_severity_drift_passes_the_gate_but_is_a_warning() -> None:
    report = detect_drift(_normal(0), _normal(1, mean=1.0), DATA, GATE)
    assert report.passed and report.status == "pass"
    assert [c.name for c in report.warnings()] == ["drift(x)"]
    assert "WARNING" in report.headline()


def test_fail_severity_drift_blocks_the_gate() -> None:
    report = detect_drift(_normal(0), _normal(1, mean=1.0), DATA, DriftGate(feature_action="fail"))
    assert not report.passed
    assert [c.name for c in report.failures()] == ["drift(x)"]


# --- label ----------------------------------------------------------------------------------


def test_a_label_shift_fails_by_default() -> None:
    reference = _tabular(x=np.arange(10.0), label=["No"] * 7 + ["Yes"] * 3)
    current = _tabular(x=np.arange(10.0), label=["No"] * 4 + ["Yes"] * 6)
    report = detect_drift(reference, current, DATA, GATE)
    expected = _psi_by_hand([0.7, 0.3], [0.4, 0.6])  # 0.376
    assert report.figures["label_psi"] == pytest.approx(expected)
    assert not report.passed
    [failure] = report.failures()
    assert failure.name == "label_drift" and failure.severity == "fail"
    assert "label distribution shifted: PSI 0.38 > 0.1" in failure.detail


def test_the_label_action_can_be_warn() -> None:
    reference = _tabular(x=np.arange(10.0), label=["No"] * 7 + ["Yes"] * 3)
    current = _tabular(x=np.arange(10.0), label=["No"] * 4 + ["Yes"] * 6)
    report = detect_drift(reference, current, DATA, DriftGate(label_action="warn"))
    assert report.passed and [c.name for c in report.warnings()] == ["label_drift"]


# --- which columns are compared ---------------------------------------------------------------


def test_only_shared_feature_columns_are_compared_and_type_changes_are_left_to_validation() -> None:
    reference = _tabular(id=[1, 2, 3, 4], colour=["a", "b", "a", "b"], age=[20, 30, 40, 50], income=[1.0, 2, 3, 4])
    current = _tabular(
        id=[5, 6, 7, 8],
        colour=["b", "b", "b", "b"],
        age=["20", "30", "40", "50"],
        extra=[1.0, 2, 3, 4],
        income=[1.0, 2, 3, 4],
    )
    report = detect_drift(reference, current, DATA, GATE)
    # id and label are not features, colour is sensitive, extra is missing from the reference.
    assert [c.name for c in report.checks] == ["drift(age)", "drift(income)", "label_drift"]
    age = _check(report, "drift(age)")
    assert age.passed and "not compared (type changed" in age.detail
    assert set(report.figures) == {"drifted_features", "label_psi", "psi.income"}
    assert report.figures["psi.income"] == 0.0 and report.figures["drifted_features"] == 0


# --- images ---------------------------------------------------------------------------------


def _images(seed: int, brighten: int = 0, n: int = 40) -> Dataset:
    pixels = np.random.default_rng(seed).integers(0, 150, size=(n, 8, 8)) + brighten
    labels = pd.DataFrame({"label": np.arange(n) % 4})
    return Dataset("image", labels, "label", pixels.astype(np.uint8))


def test_brightened_images_are_flagged_on_pixel_mean() -> None:
    report = detect_drift(_images(0), _images(1, brighten=60), IMAGES, GATE)
    assert not _check(report, "drift(pixel_mean)").passed
    assert _check(report, "drift(pixel_std)").passed  # +60 everywhere (no clipping) keeps contrast
    assert _check(report, "label_drift").passed
    assert set(report.figures) == {"drifted_features", "label_psi", "psi.pixel_mean", "psi.pixel_std"}


def test_images_from_the_same_distribution_are_not_flagged() -> None:
    report = detect_drift(_images(0), _images(1), IMAGES, GATE)
    assert report.figures["drifted_features"] == 0 and not report.warnings()
