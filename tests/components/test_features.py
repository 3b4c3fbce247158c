"""Preprocessing: hand-computed scaling and one-hot codes, strict input checks, JSON round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from components.features import (
    ImagePreprocessor,
    InputError,
    TabularPreprocessor,
    fit_preprocessor,
    preprocessor_from_dict,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    # age: mean 25, population std 5 -> (age - 25) / 5 = -1 or +1
    return pd.DataFrame(
        {
            "age": [20, 30, 20, 30],
            "sex": ["Male", "Female", "Male", "Male"],
            "employed": [True, False, True, True],
            "const": [5.0, 5.0, 5.0, 5.0],
            "target": ["Yes", "No", "Yes", "No"],
        }
    )


@pytest.fixture
def prep(frame: pd.DataFrame) -> TabularPreprocessor:
    return TabularPreprocessor.fit(frame, ["age", "sex", "employed", "const"])


def test_fit_learns_mean_std_and_sorted_categories(prep: TabularPreprocessor) -> None:
    assert prep.means == {"age": 25.0, "const": 5.0}
    assert prep.stds["age"] == pytest.approx(5.0)
    assert prep.stds["const"] == 1.0  # a zero std is stored as 1 so the column is left unscaled
    assert prep.categories == {"sex": ["Female", "Male"], "employed": ["False", "True"]}
    assert prep.width == 1 + 2 + 2 + 1


def test_transform_hand_computed(prep: TabularPreprocessor, frame: pd.DataFrame) -> None:
    out = prep.transform(frame)
    expected = np.array(
        [
            # age, sex=Female, sex=Male, employed=False, employed=True, const
            [-1.0, 0, 1, 0, 1, 0],
            [1.0, 1, 0, 1, 0, 0],
            [-1.0, 0, 1, 0, 1, 0],
            [1.0, 0, 1, 0, 1, 0],
        ],
        dtype=np.float32,
    )
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_column_order_and_extra_columns_do_not_matter(prep: TabularPreprocessor, frame: pd.DataFrame) -> None:
    shuffled = frame[["target", "const", "employed", "sex", "age"]].assign(extra=1)
    np.testing.assert_array_equal(prep.transform(shuffled), prep.transform(frame))


def test_unknown_and_missing_category_give_zeros(prep: TabularPreprocessor) -> None:
    rows = pd.DataFrame({"age": [25, 25], "sex": ["Other", None], "employed": [True, True], "const": [5, 5]})
    out = prep.transform(rows)
    np.testing.assert_array_equal(out[:, 1:3], np.zeros((2, 2)))
    np.testing.assert_array_equal(out[:, 0], [0.0, 0.0])


def test_missing_column_names_it(prep: TabularPreprocessor, frame: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="'sex'") as caught:
        prep.transform(frame.drop(columns=["sex"]))
    assert caught.value.column == "sex"


def test_strict_rejects_text_and_nan_in_numeric_lax_imputes_mean(prep: TabularPreprocessor) -> None:
    text = pd.DataFrame({"age": ["abc"], "sex": ["Male"], "employed": [True], "const": [5.0]})
    with pytest.raises(InputError, match=r"'age'.*non-numeric"):
        prep.transform(text)
    nan = text.assign(age=[math.nan])
    with pytest.raises(InputError, match=r"'age'.*NaN"):
        prep.transform(nan)
    with pytest.raises(InputError, match=r"'const'.*NaN"):
        prep.transform(text.assign(age=[30], const=[math.inf]))
    # Offline evaluation is lax: bad numeric values become the mean, i.e. 0 after scaling.
    assert prep.transform(text, strict=False)[0, 0] == 0.0
    assert prep.transform(nan, strict=False)[0, 0] == 0.0


def test_records_fast_path_matches_frame(prep: TabularPreprocessor, frame: pd.DataFrame) -> None:
    records = frame.to_dict(orient="records")
    np.testing.assert_array_equal(prep.transform_records(records), prep.transform(frame))
    # JSON-style values: bool for the flag, null numeric -> the mean -> 0, numeric text accepted.
    out = prep.transform_records([{"age": None, "sex": "Female", "employed": False, "const": "5"}])
    np.testing.assert_array_equal(out, [[0.0, 1, 0, 1, 0, 0]])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 1e308 scaled: inf in both paths
def test_one_row_path_matches_the_batched_path_bit_for_bit(prep: TabularPreprocessor) -> None:
    # A one-row request is encoded in plain Python: same values, same errors, as in a batch.
    rng = np.random.default_rng(0)
    ages: list[object] = [None, float("nan"), "31.5", 1e308, -1e-300, 0, 25, True, "x", [1]]
    sexes: list[object] = ["Male", "Female", "Other", None, 1, 1.0, True, float("nan"), {"a": 1}]
    for _ in range(400):
        row = {
            "age": ages[rng.integers(len(ages))] if rng.random() < 0.5 else float(rng.normal(25, 50)),
            "sex": sexes[rng.integers(len(sexes))],
            "employed": [True, False, "True", None, 0][rng.integers(5)],
            "const": [5, 5.5, None, "5"][rng.integers(4)],
        }
        for strict in (True, False):
            try:
                batched: object = prep.transform_records([row, row], strict=strict)[:1]
            except InputError as error:
                batched = str(error)
            try:
                one: object = prep.transform_records([row], strict=strict)
            except InputError as error:
                one = str(error)
            if isinstance(batched, str):
                assert one == batched
            else:
                assert isinstance(one, np.ndarray) and one.dtype == np.float32 and one.shape == (1, prep.width)
                assert one.tobytes() == batched.tobytes(), row  # type: ignore[attr-defined]


def test_records_errors_name_the_problem(prep: TabularPreprocessor) -> None:
    with pytest.raises(InputError, match=r"row 0 is missing column.*'age'"):
        prep.transform_records([{"sex": "Male", "employed": True, "const": 5}])
    with pytest.raises(InputError, match=r"'age'.*must be a number"):
        prep.transform_records([{"age": True, "sex": "Male", "employed": True, "const": 5}])
    with pytest.raises(InputError, match=r"'sex'.*string, number or boolean"):
        prep.transform_records([{"age": 1, "sex": ["Male"], "employed": True, "const": 5}])
    with pytest.raises(InputError, match="row 1 must be an object"):
        prep.transform_records([{"age": 1, "sex": "Male", "employed": True, "const": 5}, 3])  # type: ignore[list-item]


def test_round_trip_through_json(prep: TabularPreprocessor, frame: pd.DataFrame) -> None:
    data = json.loads(json.dumps(prep.to_dict()))
    again = preprocessor_from_dict(data)
    assert again == prep
    np.testing.assert_array_equal(again.transform(frame), prep.transform(frame))


def test_input_schema(prep: TabularPreprocessor) -> None:
    assert prep.input_schema()[:2] == [
        {"name": "age", "kind": "numeric", "categories": None},
        {"name": "sex", "kind": "categorical", "categories": ["Female", "Male"]},
    ]


def test_image_preprocessor_fit_and_transform() -> None:
    images = np.array([[[0, 255], [0, 255]], [[0, 255], [255, 255]]], dtype=np.uint8)  # (2, 2, 2)
    prep = fit_preprocessor("image", images=images)
    assert isinstance(prep, ImagePreprocessor)
    assert prep.shape == (1, 2, 2) and prep.scale == pytest.approx(1 / 255)
    # scaled pixels: five 1s and three 0s -> mean 0.625, std sqrt(0.625 * 0.375)
    assert prep.mean == [pytest.approx(0.625)]
    assert prep.std == [pytest.approx(math.sqrt(0.625 * 0.375))]
    out = prep.transform(images)
    assert out.shape == (2, 1, 2, 2) and out.dtype == np.float32
    assert out.mean() == pytest.approx(0.0, abs=1e-6) and out.std() == pytest.approx(1.0, abs=1e-6)
    # nested lists and the explicit channel axis give the same result
    np.testing.assert_array_equal(prep.transform(images[:, None].tolist()), out)
    again = preprocessor_from_dict(json.loads(json.dumps(prep.to_dict())))
    np.testing.assert_array_equal(again.transform(images), out)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 3, 3)), "shape"),
        (np.zeros((1, 2, 2, 2)), "shape"),
        (np.full((1, 2, 2), np.nan), "NaN"),
        (np.full((1, 2, 2), 256.0), r"\[0, 255\]"),
        (np.full((1, 2, 2), -1.0), r"\[0, 255\]"),
        ([[[0, 1], [2]]], "regular array"),
        ([[["a", "b"], ["c", "d"]]], "only numbers"),
    ],
)
def test_image_preprocessor_rejects_bad_input(images: object, message: str) -> None:
    prep = ImagePreprocessor.fit(np.zeros((1, 2, 2), dtype=np.uint8))
    with pytest.raises(InputError, match=message):
        prep.transform(images)


def test_fit_preprocessor_needs_its_inputs() -> None:
    with pytest.raises(ValueError, match="frame and columns"):
        fit_preprocessor("tabular")
    with pytest.raises(ValueError, match="unknown preprocessor kind"):
        preprocessor_from_dict({"kind": "audio"})
