"""Bad inputs: each corruption of a clean table is caught and named; clean resamples never are.

The clean table is scikit-lego's arrests data (5,226 rows) with an `id` column added; the suite
is learnt from it with the bundled pipeline's thresholds. Every corruption must fail validation
with exactly the expected check, whose detail names the problem in plain words, and both
engines (fast and Great Expectations) must agree on every check. Files that cannot be read as a
dataset at all are refused earlier, by `load_source`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklego.datasets import load_arrests

from components.config import DataConfig, ValidationGate
from components.dataset import DataLoadError, Dataset, load_source
from components.validation import build_suite, validate_dataset

ARRESTS = DataConfig(source="sklego:arrests", target="released", id="id", time="year", sensitive=["colour", "sex"])
GATE = ValidationGate(range_margin=0.1, max_null_fraction=0.01, min_rows=500)  # as in params.yaml


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    table = pd.DataFrame(load_arrests(as_frame=True))
    table.insert(0, "id", np.arange(len(table)))
    return table


@pytest.fixture(scope="module")
def suite(clean: pd.DataFrame) -> dict:
    return build_suite(Dataset("tabular", clean, "released"), ARRESTS, GATE)


def _report(table: pd.DataFrame, suite: dict, engine: str = "fast"):
    return validate_dataset(Dataset("tabular", table.reset_index(drop=True), "released"), suite, ARRESTS, engine=engine)


def _with(column: str, rows: slice | list[int], value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def corrupt(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        table.loc[rows, column] = value
        return table

    return corrupt


def _renamed(table: pd.DataFrame) -> pd.DataFrame:
    return table.rename(columns={"colour": "color"})


def _age_as_text(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(age=table["age"].astype(str))


def _eleven_copies(table: pd.DataFrame) -> pd.DataFrame:
    copies = pd.concat([table] * 11, ignore_index=True)
    return copies.assign(id=np.arange(len(copies)))


# corruption -> (the only failing check, a phrase its detail must contain)
CORRUPTIONS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, str]] = {
    "missing column": (
        lambda t: t.drop(columns=["citizen"]),
        "expect_table_columns_to_match_set",
        "missing column 'citizen'",
    ),
    "renamed column": (
        _renamed,
        "expect_table_columns_to_match_set",
        "missing column 'colour'; unexpected column 'color'",
    ),
    "wrong dtype": (
        _age_as_text,
        "expect_column_values_to_be_in_type_list(age)",
        "column 'age': 5226 values are not numeric, e.g. ['17', '18', '14', '16', '20']",
    ),
    # every 10th row: 523 of 5,226 rows
    "10% nulls in a required field": (
        _with("checks", slice(None, None, 10), np.nan),
        "expect_column_values_to_not_be_null(checks)",
        "column 'checks': 10.0% nulls, at most 1.0% allowed",
    ),
    # age 12..66 widened by its long upper tail (66 - 99th percentile): 6.6..82
    "out-of-range values": (
        _with("age", [3, 4, 5], 150),
        "expect_column_values_to_be_between(age)",
        "column 'age': 3 values not >= 6.6 and <= 82, e.g. [150]",
    ),
    "duplicate ids": (
        _with("id", [7], 0),
        "expect_column_values_to_be_unique(id)",
        "column 'id': 2 rows share a value, e.g. [0]",
    ),
    "unknown label": (
        _with("released", [5, 6], "Maybe"),
        "expect_column_values_to_be_in_set(released)",
        "column 'released': unexpected values ['Maybe']",
    ),
    # every 20th row: 262 of 5,226 rows = 5.0%
    "missing labels": (
        _with("released", slice(None, None, 20), np.nan),
        "expect_column_values_to_not_be_null(released)",
        "column 'released': 5.0% of rows have no label, at most 0.0% allowed",
    ),
    # 'No' was 17.1% of the reference labels; its floor is a quarter of that
    "single class": (
        _with("released", slice(None), "Yes"),
        "expect_column_values_to_be_in_set(released='No')",
        "column 'released': class 'No' is 0.0% of labels, at least 4.3% expected (0.25x its reference share of 17.1%)",
    ),
    "too few rows": (
        lambda t: t.head(400),
        "expect_table_row_count_to_be_between",
        "table has 400 rows, at least 500 required",
    ),
    "more than 10x the reference rows": (
        _eleven_copies,
        "expect_table_row_count_to_be_between",
        "table has 57486 rows, at most 52260 allowed",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_fails_with_one_check_naming_the_problem(clean, suite, name):
    corrupt, check, phrase = CORRUPTIONS[name]
    report = _report(corrupt(clean), suite)
    assert not report.passed
    assert [c.name for c in report.failures()] == [check]
    assert phrase in report.failures()[0].detail


# every corruption but the 57,486-row one, which would only slow GX down
@pytest.mark.parametrize("name", ["clean", *list(CORRUPTIONS)[:-1]])
def test_fast_and_gx_engines_give_the_same_checks(clean, suite, name):
    table = clean if name == "clean" else CORRUPTIONS[name][0](clean)
    fast, gx = _report(table, suite, "fast"), _report(table, suite, "gx")
    assert len(fast.checks) == len(gx.checks) > 20
    for ours, theirs in zip(fast.checks, gx.checks, strict=True):
        assert ours == theirs
    assert fast.figures == gx.figures


def test_twenty_clean_resamples_all_pass(clean, suite):
    """Bootstrap samples of 80% of the rows (new rows get new ids): no false alarm."""
    alarms = []
    for seed in range(20):
        rows = np.random.default_rng(seed).choice(len(clean), size=int(0.8 * len(clean)), replace=True)
        resample = clean.iloc[rows].assign(id=np.arange(len(rows)) + 10_000 * seed)
        report = _report(resample, suite)
        alarms += [f"seed {seed}: {c.detail}" for c in report.failures()]
    assert alarms == []


def test_new_data_from_the_other_half_passes_a_suite_learnt_on_one_half(clean):
    """Unlike a resample, new data can exceed the reference's extremes: the margins must allow it."""
    order = np.random.default_rng(6).permutation(len(clean))
    reference, new = clean.iloc[order[: len(clean) // 2]], clean.iloc[order[len(clean) // 2 :]]
    half_suite = build_suite(Dataset("tabular", reference.reset_index(drop=True), "released"), ARRESTS, GATE)
    report = _report(new, half_suite)
    assert report.passed, report.failures()


# --- files refused at load ------------------------------------------------------------------

_CSV = "id,age,released\n1,20,Yes\n2,31,No\n3,45,Yes\n"


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("empty.csv", b"", "data file is empty"),
        ("truncated.csv", _CSV[:-4].encode(), "looks truncated"),
        ("binary.csv", bytes(range(256)) * 4, "not a text CSV file (it holds binary data)"),
        ("latin1.csv", "id,age,released\n1,20,Oui\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        ("ragged.csv", b"id,age,released\n1,20,Yes\n2,31,No,extra\n", "not a well-formed CSV"),
        ("header_only.csv", b"id,age,released\n", "has a header but no rows"),
        ("no_target.csv", b"id,age\n1,20\n", "target column 'released' not in"),
        ("garbage.parquet", b"PAR1 not really parquet", "not a readable Parquet file"),
        ("garbage.npz", b"not a zip archive", "not a readable .npz array file"),
    ],
)
def test_unreadable_files_are_refused_at_load(tmp_path: Path, filename: str, content: bytes, message: str):
    (tmp_path / filename).write_bytes(content)
    kind = filename.rsplit(".", 1)[1]
    with pytest.raises(DataLoadError) as refused:
        load_source(DataConfig(source=f"{kind}:{filename}", target="released"), tmp_path)
    assert message in str(refused.value)
    assert filename in str(refused.value)


def test_a_well_formed_csv_loads(tmp_path: Path):
    (tmp_path / "ok.csv").write_text(_CSV)
    dataset = load_source(DataConfig(source="csv:ok.csv", target="released"), tmp_path)
    assert dataset.labels.tolist() == ["Yes", "No", "Yes"]
