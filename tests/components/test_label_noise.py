"""Confident learning: flipped labels are found, clean labels pass, quarantine touches train only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig
from components.dataset import Dataset
from components.label_noise import SUSPECT_COLUMNS, LabelNoiseReport, find_label_noise, quarantine
from components.split import SplitIndices

DATA = DataConfig(source="csv:x.csv", target="y", id="key")
N, FLIPPED = 600, 30  # 5% of the labels flipped


def _separable(n: int = N, seed: int = 0) -> pd.DataFrame:
    """Labels from a linear rule on 3 numeric columns and a categorical one: no label noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    colour = rng.choice(["red", "blue"], n)
    score = x[:, 0] + 0.7 * x[:, 1] - 0.5 * x[:, 2] + np.where(colour == "red", 0.5, -0.5)
    table = pd.DataFrame(x, columns=["x0", "x1", "x2"]).assign(colour=colour)
    return table.assign(key=[f"k{i}" for i in range(n)], y=np.where(score > 0, "pos", "neg"))


def _flipped(table: pd.DataFrame, count: int = FLIPPED, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    rows = np.sort(np.random.default_rng(seed).choice(len(table), count, replace=False))
    table = table.copy()
    table.loc[rows, "y"] = np.where(table.loc[rows, "y"] == "pos", "neg", "pos")
    return table, rows


@pytest.fixture(scope="module")
def noisy() -> tuple[LabelNoiseReport, np.ndarray, pd.DataFrame]:
    table, flipped = _flipped(_separable())
    return find_label_noise(Dataset("tabular", table, "y"), DATA), flipped, table


def test_flipped_labels_lead_the_ranking(noisy):
    report, flipped, _ = noisy
    top = report.suspects["row"].to_numpy()[:FLIPPED]
    hits = np.isin(top, flipped).sum()
    assert hits / len(top) >= 0.6  # precision among the top-k suspects
    assert hits / FLIPPED >= 0.6  # recall of the flipped rows
    # cleanlab undercounts flips that land near the class boundary (0.023 here), never 0 as clean.
    assert 0.01 <= report.estimated_noise_rate <= 0.10


def test_clean_labels_give_a_low_noise_rate():
    report = find_label_noise(Dataset("tabular", _separable(), "y"), DATA)
    assert report.estimated_noise_rate <= 0.01
    assert report.gate_report(0.02).passed


def test_suspects_table_is_ranked_and_described(noisy):
    report, _, table = noisy
    suspects = report.suspects
    assert list(suspects.columns) == SUSPECT_COLUMNS
    assert report.n == N and report.n_issues == len(suspects) > 0
    assert suspects["score"].is_monotonic_increasing  # most suspicious (lowest quality) first
    first = suspects.iloc[0]
    assert first["id"] == table.loc[first["row"], "key"]
    assert first["given_label"] == table.loc[first["row"], "y"]
    assert first["suggested_label"] != first["given_label"]
    assert report.to_csv().splitlines()[0] == "row,id,given_label,suggested_label,score"


def test_rows_restrict_the_analysis_and_ids_default_to_rows():
    table, _ = _flipped(_separable())
    rows = np.arange(100, 600)
    data = DataConfig(source="csv:x.csv", target="y")
    report = find_label_noise(Dataset("tabular", table.drop(columns="key"), "y"), data, rows=rows, probe="logistic")
    assert report.n == 500 and report.probe == "logistic"
    assert set(report.suspects["row"]) <= set(rows)
    assert (report.suspects["id"] == report.suspects["row"]).all()


def test_auto_picks_boosting_where_no_line_separates_the_classes():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(400, 2))
    table = pd.DataFrame(x, columns=["a", "b"]).assign(y=np.where(x[:, 0] * x[:, 1] > 0, "same", "diff"))
    report = find_label_noise(Dataset("tabular", table, "y"), DataConfig(source="csv:x.csv", target="y"))
    assert report.probe == "boosting"
    assert report.probe_accuracy > 0.9


def test_flipped_image_labels_are_found():
    # Two classes of 8x8 images: a bright left half or a bright right half, plus noise.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    images = rng.integers(0, 60, size=(200, 8, 8)).astype(np.uint8)
    images[labels == 0, :, :4] += 150
    images[labels == 1, :, 4:] += 150
    flipped = np.array([3, 50, 120, 180])
    labels[flipped] = 1 - labels[flipped]
    dataset = Dataset("image", pd.DataFrame({"label": labels}), "label", images)
    report = find_label_noise(dataset, DataConfig(source="npz:x.npz", target="label"))
    assert set(report.suspects["row"][:4]) == set(flipped)
    top = report.suspects.iloc[0]
    assert top["suggested_label"] == 1 - top["given_label"]  # labels keep their type (int here)


def test_gate_blocks_above_the_ceiling_and_only_warns_without_one(noisy):
    report, _, _ = noisy
    failed = report.gate_report(0.01)
    assert failed.gate == "label_noise" and not failed.passed
    assert failed.figures["estimated_noise_rate"] == report.estimated_noise_rate
    assert failed.figures["n_issues"] == report.n_issues
    unset = report.gate_report(None)
    assert unset.passed
    assert [c.severity for c in unset.warnings()] == ["warn"]
    assert "reported, not gated" in unset.warnings()[0].detail


def test_a_class_with_one_row_is_refused():
    table = _separable(20).assign(y=["a"] * 19 + ["b"])
    with pytest.raises(ValueError, match="two rows each"):
        find_label_noise(Dataset("tabular", table, "y"), DATA)


def test_quarantine_drops_suspects_from_train_only():
    split = SplitIndices(train=np.array([0, 1, 2, 3, 4]), val=np.array([5, 6]), test=np.array([7, 8, 9]))
    suspects = pd.DataFrame({"row": [8, 1, 5, 3], "id": [8, 1, 5, 3], "given_label": list("abab")})
    report = LabelNoiseReport(n=10, estimated_noise_rate=0.4, n_issues=4, suspects=suspects)
    cleaned, dropped = quarantine(split, report)
    assert dropped == 2
    np.testing.assert_array_equal(cleaned.train, [0, 2, 4])
    np.testing.assert_array_equal(cleaned.val, split.val)
    np.testing.assert_array_equal(cleaned.test, split.test)


# --- acceptance: 10 seeds of 5% random flips (benchmarks/label_noise.py prints the details) ---


def _seeds_loop(dataset: Dataset, data: DataConfig, rows: np.ndarray, ceiling: float) -> dict[str, int]:
    """Over 10 seeds: clean runs that pass, flipped runs flagged, flipped runs with P and R >= 0.6."""
    counts = {"clean_passes": 0, "flagged": 0, "precise": 0}
    labels = dataset.labels.to_numpy()
    classes = np.unique(labels)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        flipped = rng.choice(rows, round(0.05 * len(rows)), replace=False)
        noisy = labels.copy()
        noisy[flipped] = [rng.choice(classes[classes != v]) for v in noisy[flipped]]
        flipped_set = Dataset("tabular", dataset.table.assign(**{dataset.target: noisy}), dataset.target)
        clean = find_label_noise(dataset, data, rows, seed=seed)
        report = find_label_noise(flipped_set, data, rows, seed=seed)
        top = report.suspects["row"].to_numpy()[: len(flipped)]
        hits = np.isin(top, flipped).sum()
        counts["clean_passes"] += clean.gate_report(ceiling).passed
        counts["flagged"] += not report.gate_report(ceiling).passed
        counts["precise"] += hits / max(len(top), 1) >= 0.6 and hits / len(flipped) >= 0.6
    return counts


@pytest.mark.slow
def test_synthetic_table_meets_the_acceptance_figures():
    table = _separable(2000).drop(columns="key")
    counts = _seeds_loop(
        Dataset("tabular", table, "y"), DataConfig(source="csv:x.csv", target="y"), np.arange(2000), 0.01
    )
    assert counts["clean_passes"] >= 9 and counts["flagged"] >= 9 and counts["precise"] >= 9, counts


@pytest.mark.slow
def test_arrests_gate_separates_clean_from_flipped_labels():
    # The bundled pipeline's rows before the test period (years < 2001: training + validation).
    # Its labels are ambiguous by nature (5 coarse features, 83% "Yes"): the gate separates clean
    # from 5%-flipped labels at max_noise_rate 0.065, but flipped rows cannot be told apart from
    # genuine "No" rows: precision of the top suspects stays near 0.4 (an oracle ranking that
    # knows the clean-label model gets about the same), so that figure is not asserted here.
    from components.dataset import load_source

    data = DataConfig(source="sklego:arrests", target="released", sensitive=["colour", "sex"], time="year")
    dataset = load_source(data)
    rows = np.flatnonzero(dataset.table["year"].to_numpy() < 2001)
    counts = _seeds_loop(dataset, data, rows, 0.065)
    assert counts["clean_passes"] >= 9 and counts["flagged"] >= 9, counts
