"""Data validation gate: a suite learnt from a clean table, then broken one way at a time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, ValidationGate
from components.dataset import Dataset
from components.validation import build_suite, image_table, render_suite_summary, validate_dataset

DATA = DataConfig(source="csv:people.csv", target="label", id="id", time="year")
GATE = ValidationGate(range_margin=0.1, max_null_fraction=0.01, min_rows=10)


def _people() -> pd.DataFrame:
    """20 clean rows: age 20..39, two colours, no nulls."""
    n = 20
    return pd.DataFrame(
        {
            "id": np.arange(100, 100 + n),
            "year": [2019] * 10 + [2020] * 10,
            "age": np.arange(20, 20 + n),
            "income": np.linspace(1000.0, 2900.0, n),
            "colour": ["Black", "White"] * 10,
            "label": ["Yes", "No", "No", "Yes"] * 5,
        }
    )


def _tabular(table: pd.DataFrame) -> Dataset:
    return Dataset("tabular", table, "label")


@pytest.fixture(scope="module")
def suite() -> dict:
    return build_suite(_tabular(_people()), DATA, GATE)


def _failure_for(report, column: str) -> list[str]:
    return [c.detail for c in report.failures() if f"'{column}'" in c.detail]


def test_clean_table_passes_its_own_suite_after_a_json_round_trip(suite):
    loaded = json.loads(json.dumps(suite))
    report = validate_dataset(_tabular(_people()), loaded, DATA)
    assert report.passed, report.headline()
    assert report.gate == "validation"
    assert report.figures == {"rows": 20.0, "validation_success_fraction": 1.0}


def test_suite_learns_widened_range_label_domain_and_id_uniqueness(suite):
    by_key = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]}
    # age 20..39 widened by 0.1 * 19 on each side
    assert by_key[("expect_column_values_to_be_between", "age")]["min_value"] == pytest.approx(18.1)
    assert by_key[("expect_column_values_to_be_between", "age")]["max_value"] == pytest.approx(40.9)
    assert by_key[("expect_column_values_to_be_in_set", "label")]["value_set"] == ["No", "Yes"]
    assert by_key[("expect_column_values_to_be_in_set", "colour")]["value_set"] == ["Black", "White"]
    assert by_key[("expect_column_values_to_not_be_null", "age")]["mostly"] == pytest.approx(0.99)
    assert ("expect_column_values_to_be_unique", "id") in by_key
    # ids and the time column are expected to move on: no range on either
    assert ("expect_column_values_to_be_between", "id") not in by_key
    assert ("expect_column_values_to_be_between", "year") not in by_key
    assert by_key[("expect_table_row_count_to_be_between", None)]["min_value"] == 10


def test_missing_column_fails_without_raising(suite):
    report = validate_dataset(_tabular(_people().drop(columns=["colour"])), suite, DATA)
    assert not report.passed
    assert "missing column 'colour'" in _failure_for(report, "colour")


def test_wrong_dtype_fails_naming_the_column(suite):
    table = _people()
    table["age"] = table["age"].astype(str)
    report = validate_dataset(_tabular(table), suite, DATA)
    details = _failure_for(report, "age")
    assert details and "not numeric" in details[0]


def test_ten_percent_nulls_in_a_no_null_column_fails(suite):
    table = _people()
    table.loc[[3, 7], "income"] = np.nan  # 2 of 20 rows
    report = validate_dataset(_tabular(table), suite, DATA)
    assert _failure_for(report, "income") == ["column 'income': 10.0% nulls, at most 1.0% allowed"]
    check = next(c for c in report.failures() if "income" in c.name)
    assert check.value == pytest.approx(0.1)
    assert check.threshold == pytest.approx(0.01)


def test_value_inside_the_margin_passes_and_outside_fails(suite):
    table = _people()
    table.loc[0, "age"] = 40  # <= 40.9: inside the widened range
    assert validate_dataset(_tabular(table), suite, DATA).passed
    table.loc[0, "age"] = 41
    details = _failure_for(validate_dataset(_tabular(table), suite, DATA), "age")
    assert len(details) == 1 and "41" in details[0]


def test_unknown_category_fails(suite):
    table = _people()
    table.loc[4, "colour"] = "Purple"
    report = validate_dataset(_tabular(table), suite, DATA)
    assert _failure_for(report, "colour") == ["column 'colour': unexpected values ['Purple']"]


def test_duplicate_id_fails(suite):
    table = _people()
    table.loc[1, "id"] = table.loc[0, "id"]
    details = _failure_for(validate_dataset(_tabular(table), suite, DATA), "id")
    assert len(details) == 1 and "share a value" in details[0]


def test_a_later_year_is_not_out_of_range(suite):
    table = _people()
    table.loc[:4, "year"] = 2031
    assert validate_dataset(_tabular(table), suite, DATA).passed


def test_too_few_rows_fails(suite):
    report = validate_dataset(_tabular(_people().head(8)), suite, DATA)
    assert [c.detail for c in report.failures()] == ["table has 8 rows, at least 10 required"]


def test_object_and_pandas_str_text_columns_are_both_strings(suite):
    table = _people()
    table["colour"] = table["colour"].astype(object)
    table["label"] = table["label"].astype("string")
    assert validate_dataset(_tabular(table), suite, DATA).passed


def test_summary_lists_every_expectation(suite):
    summary = render_suite_summary(suite)
    assert "column 'colour': values in ['Black', 'White']" in summary
    assert summary.count("\n- ") == len(suite["expectations"])


# --- images -------------------------------------------------------------------------------

IMAGE_DATA = DataConfig(source="npz:digits.npz", target="label")


def _images(n: int = 12, size: int = 6) -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(10, 200, size=(n, size, size), dtype=np.uint8)
    return Dataset("image", pd.DataFrame({"label": np.arange(n) % 3}), "label", images)


@pytest.fixture(scope="module")
def image_suite() -> dict:
    return build_suite(_images(), IMAGE_DATA, ValidationGate(range_margin=0.0, min_rows=10))


def test_image_table_has_shape_and_pixel_statistics():
    images = np.zeros((2, 3, 4, 5), dtype=np.uint8)
    images[1, 0, 0, 0] = 90
    table = image_table(Dataset("image", pd.DataFrame({"label": [0, 1]}), "label", images))
    assert list(table.columns) == ["label", "height", "width", "channels", "pixel_min", "pixel_max", "pixel_std"]
    assert table["height"].tolist() == [4, 4] and table["channels"].tolist() == [3, 3]
    assert table["pixel_max"].tolist() == [0.0, 90.0]
    assert table["pixel_std"].iloc[0] == 0.0


def test_clean_images_pass(image_suite):
    assert validate_dataset(_images(), image_suite, IMAGE_DATA).passed


def test_all_constant_image_fails(image_suite):
    dataset = _images()
    dataset.images[5] = 100
    details = _failure_for(validate_dataset(dataset, image_suite, IMAGE_DATA), "pixel_std")
    assert details == ["column 'pixel_std': 1 values not > 0, e.g. [0.0]"]


def test_wrong_shape_fails(image_suite):
    report = validate_dataset(_images(size=8), image_suite, IMAGE_DATA)
    assert "column 'height': unexpected values [8]" in _failure_for(report, "height")
    assert "column 'width': unexpected values [8]" in _failure_for(report, "width")


def test_unknown_label_and_tabular_data_against_an_image_suite_fail(image_suite):
    dataset = _images()
    dataset.table.loc[0, "label"] = 7
    assert _failure_for(validate_dataset(dataset, image_suite, IMAGE_DATA), "label") == [
        "column 'label': unexpected values [7]"
    ]
    report = validate_dataset(_tabular(_people()), image_suite, DATA)
    assert report.headline() == "FAIL: suite is for image data, got tabular data"
