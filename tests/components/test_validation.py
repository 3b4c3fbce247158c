"""Data validation gate: a suite learnt from a clean table, then broken one way at a time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, ValidationGate
from components.dataset import Dataset
from components.validation import build_suite, data_docs_html, image_table, render_suite_summary, validate_dataset

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


@pytest.fixture(params=["fast", "gx"])
def engine(request) -> str:
    """Every behaviour holds for both engines."""
    return request.param


def _failure_for(report, column: str) -> list[str]:
    return [c.detail for c in report.failures() if f"'{column}'" in c.detail]


def test_clean_table_passes_its_own_suite_after_a_json_round_trip(suite, engine):
    loaded = json.loads(json.dumps(suite))
    report = validate_dataset(_tabular(_people()), loaded, DATA, engine=engine)
    assert report.passed, report.headline()
    assert report.gate == "validation"
    assert report.figures == {"rows": 20.0, "validation_success_fraction": 1.0}


def test_suite_learns_widened_range_label_domain_and_id_uniqueness(suite):
    by_key = {
        (e["type"], e["kwargs"].get("column")): e["kwargs"]
        for e in suite["expectations"]
        if "class_share" not in e["meta"]
    }
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
    assert by_key[("expect_table_row_count_to_be_between", None)] == {"min_value": 10, "max_value": 200}  # 10 x 20
    # a missing label is never allowed: the reference had none
    assert "mostly" not in by_key[("expect_column_values_to_not_be_null", "label")]  # 1.0, GX's default


def test_missing_column_fails_without_raising(suite, engine):
    report = validate_dataset(_tabular(_people().drop(columns=["colour"])), suite, DATA, engine=engine)
    assert not report.passed
    assert "missing column 'colour'" in _failure_for(report, "colour")


def test_wrong_dtype_fails_naming_the_column(suite, engine):
    table = _people()
    table["age"] = table["age"].astype(str)
    report = validate_dataset(_tabular(table), suite, DATA, engine=engine)
    details = _failure_for(report, "age")
    assert details and "not numeric" in details[0]


def test_ten_percent_nulls_in_a_no_null_column_fails(suite, engine):
    table = _people()
    table.loc[[3, 7], "income"] = np.nan  # 2 of 20 rows
    report = validate_dataset(_tabular(table), suite, DATA, engine=engine)
    assert _failure_for(report, "income") == ["column 'income': 10.0% nulls, at most 1.0% allowed"]
    check = next(c for c in report.failures() if "income" in c.name)
    assert check.value == pytest.approx(0.1)
    assert check.threshold == pytest.approx(0.01)


def test_value_inside_the_margin_passes_and_outside_fails(suite, engine):
    table = _people()
    table.loc[0, "age"] = 40  # <= 40.9: inside the widened range
    assert validate_dataset(_tabular(table), suite, DATA, engine=engine).passed
    table.loc[0, "age"] = 41
    details = _failure_for(validate_dataset(_tabular(table), suite, DATA, engine=engine), "age")
    assert len(details) == 1 and "41" in details[0]


def test_unknown_category_fails(suite, engine):
    table = _people()
    table.loc[4, "colour"] = "Purple"
    report = validate_dataset(_tabular(table), suite, DATA, engine=engine)
    assert _failure_for(report, "colour") == ["column 'colour': unexpected values ['Purple']"]


def test_duplicate_id_fails(suite, engine):
    table = _people()
    table.loc[1, "id"] = table.loc[0, "id"]
    details = _failure_for(validate_dataset(_tabular(table), suite, DATA, engine=engine), "id")
    assert len(details) == 1 and "share a value" in details[0]


def test_a_later_year_is_not_out_of_range(suite, engine):
    table = _people()
    table.loc[:4, "year"] = 2031
    assert validate_dataset(_tabular(table), suite, DATA, engine=engine).passed


def test_too_few_rows_fails(suite, engine):
    report = validate_dataset(_tabular(_people().head(8)), suite, DATA, engine=engine)
    assert [c.detail for c in report.failures()] == ["table has 8 rows, at least 10 required"]


def test_object_and_pandas_str_text_columns_are_both_strings(suite, engine):
    table = _people()
    table["colour"] = table["colour"].astype(object)
    table["label"] = table["label"].astype("string")
    assert validate_dataset(_tabular(table), suite, DATA, engine=engine).passed


def test_a_single_missing_label_fails(suite, engine):
    table = _people()
    table.loc[3, "label"] = None  # 1 of 20 rows
    report = validate_dataset(_tabular(table), suite, DATA, engine=engine)
    assert [c.detail for c in report.failures()] == ["column 'label': 5.0% of rows have no label, at most 0.0% allowed"]


def test_more_than_ten_times_the_reference_rows_fails(suite, engine):
    table = pd.concat([_people()] * 11, ignore_index=True).assign(id=np.arange(220))
    report = validate_dataset(_tabular(table), suite, DATA, engine=engine)
    assert [c.detail for c in report.failures()] == [
        "table has 220 rows, at most 200 allowed (far more than the reference: a bad join or double append?)"
    ]
    assert (report.failures()[0].value, report.failures()[0].threshold) == (220.0, 200.0)


def test_a_vanishing_class_fails_on_its_share(suite, engine):
    table = _people()
    table["label"] = ["Yes"] * 19 + ["No"]  # 'No' falls from 50% to 5%; its floor is 12.5%
    report = validate_dataset(_tabular(table), suite, DATA, engine=engine)
    [check] = report.failures()
    assert check.name == "expect_column_values_to_be_in_set(label='No')"
    assert check.detail == (
        "column 'label': class 'No' is 5.0% of labels, at least 12.5% expected (0.25x its reference share of 50.0%)"
    )
    assert (check.value, check.threshold) == (pytest.approx(0.05), 0.125)


def test_a_long_tail_widens_the_range_more_than_the_margin():
    # x = 0..9 and 100: 1% of the range pads by 1, but the upper tail (100 - 99th percentile
    # 90.9) is 9.1 long, so the upper bound moves to 109.1; the lower tail is short (0.1).
    table = pd.DataFrame({"x": [*range(10), 100], "label": ["a", "b"] * 5 + ["a"]})
    suite = build_suite(
        _tabular(table), DataConfig(source="csv:x.csv", target="label"), GATE.model_copy(update={"range_margin": 0.01})
    )
    [between] = [e["kwargs"] for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_between"]
    assert (between["min_value"], between["max_value"]) == (pytest.approx(-1.0), pytest.approx(109.1))


def test_a_warning_expectation_is_recorded_without_blocking(suite, engine):
    lenient = json.loads(json.dumps(suite))
    for expectation in lenient["expectations"]:
        if expectation["kwargs"].get("column") == "colour" and expectation["type"].endswith("in_set"):
            expectation["severity"] = "warning"
    table = _people()
    table.loc[4, "colour"] = "Purple"
    report = validate_dataset(_tabular(table), lenient, DATA, engine=engine)
    assert report.passed
    assert [c.detail for c in report.warnings()] == ["column 'colour': unexpected values ['Purple']"]


def test_engines_agree_on_object_nullable_and_categorical_columns():
    table = pd.DataFrame(
        {
            "n": pd.array([*range(18), None, None], dtype="Int64"),
            "cat": pd.Categorical(["a", "b"] * 10),
            "flag": [True, False] * 10,
            "obj": pd.Series(["x", "y"] * 10, dtype=object),
            "label": [0, 1, 2, 3] * 5,
        }
    )
    data = DataConfig(source="csv:x.csv", target="label")
    suite = build_suite(_tabular(table), data, ValidationGate(max_null_fraction=0.2, min_rows=5))
    bad = table.assign(
        n=table["n"] * 100,
        cat=pd.Categorical(["a", "z"] * 10),
        flag=pd.array([None, *([True, False] * 9), True], dtype="boolean"),
        obj=pd.Series([1, "y", 2.5, None] * 5, dtype=object),
    )
    for batch in (table, bad):
        fast = validate_dataset(_tabular(batch), suite, data, engine="fast")
        gx = validate_dataset(_tabular(batch), suite, data, engine="gx")
        assert fast.checks == gx.checks
    assert [c.detail for c in fast.failures()] == [
        "column 'n': 17 values not >= -1.7 and <= 18.7, e.g. [100.0, 200.0, 300.0, 400.0, 500.0]",
        "column 'cat': unexpected values ['z']",
        "column 'obj': 10 values are not string, e.g. [1, 2.5]",
        "column 'obj': 25.0% nulls, at most 20.0% allowed",
        "column 'obj': unexpected values [1, 2.5]",
    ]


def test_fast_engine_fails_closed_on_an_expectation_it_does_not_know(suite):
    extended = json.loads(json.dumps(suite))
    mean_check = {"column": "age", "min_value": 0, "max_value": 100}
    extended["expectations"].append({"type": "expect_column_mean_to_be_between", "kwargs": mean_check, "meta": {}})
    assert validate_dataset(_tabular(_people()), extended, DATA, engine="gx").passed
    [check] = validate_dataset(_tabular(_people()), extended, DATA, engine="fast").failures()
    assert "does not implement this expectation; validate with engine='gx'" in check.detail


def test_data_docs_render_the_failing_column(suite, tmp_path):
    table = _people()
    table.loc[4, "colour"] = "Purple"
    site = data_docs_html(_tabular(table), suite, tmp_path / "docs")
    assert (site / "index.html").is_file()
    [page] = (site / "validations").rglob("*.html")
    html = page.read_text()
    assert "colour" in html and "Purple" in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # nothing written beside it


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


def test_clean_images_pass(image_suite, engine):
    assert validate_dataset(_images(), image_suite, IMAGE_DATA, engine=engine).passed


def test_all_constant_image_fails(image_suite, engine):
    dataset = _images()
    dataset.images[5] = 100
    details = _failure_for(validate_dataset(dataset, image_suite, IMAGE_DATA, engine=engine), "pixel_std")
    assert details == ["column 'pixel_std': 1 values not > 0, e.g. [0.0]"]


def test_wrong_shape_fails(image_suite, engine):
    report = validate_dataset(_images(size=8), image_suite, IMAGE_DATA, engine=engine)
    assert "column 'height': unexpected values [8]" in _failure_for(report, "height")
    assert "column 'width': unexpected values [8]" in _failure_for(report, "width")


def test_unknown_label_and_tabular_data_against_an_image_suite_fail(image_suite, engine):
    dataset = _images()
    dataset.table.loc[0, "label"] = 7
    assert _failure_for(validate_dataset(dataset, image_suite, IMAGE_DATA, engine=engine), "label") == [
        "column 'label': unexpected values [7]"
    ]
    report = validate_dataset(_tabular(_people()), image_suite, DATA, engine=engine)
    assert report.headline() == "FAIL: suite is for image data, got tabular data"


def test_a_class_that_all_but_vanishes_from_the_images_fails(image_suite, engine):
    dataset = _images()
    dataset.table["label"] = [0, 1] * 6  # class 2 was a third of the labels, now none
    details = _failure_for(validate_dataset(dataset, image_suite, IMAGE_DATA, engine=engine), "label")
    assert details == [
        "column 'label': class 2 is 0.0% of labels, at least 8.3% expected (0.25x its reference share of 33.3%)"
    ]
