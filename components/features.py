"""Preprocessing that travels inside the model package, so serving can never skew from training.

A preprocessor is fitted once on the training split, stored as plain JSON in the model's
`spec.json`, and applied by the very same code at training, evaluation and serving time.

Tabular rows become a float32 matrix: numeric columns are standardised with the training mean
and standard deviation, categorical (and boolean) columns are one-hot encoded over the sorted
training categories. Images become float32 (n, channels, height, width), scaled to [0, 1] and
standardised per channel.

pandas is imported only where a DataFrame is fitted or transformed: the serving worker encodes
JSON rows with this same code (`transform_records`) without loading pandas, so the lean server
and training share one implementation instead of two that could drift apart.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

UINT8_SCALE = 1.0 / 255.0


class InputError(ValueError):
    """The input does not fit the model's schema; the message names the column or the problem.

    Messages never quote the offending value: they end up in HTTP responses and logs.

    Attributes:
        column: The column at fault, where there is one.
    """

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


# --------------------------------------------------------------------------------------------
# Tabular
# --------------------------------------------------------------------------------------------


def _is_numeric_series(series: pd.Series) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    # Booleans are numeric to pandas, but a flag is a category, not a magnitude.
    return is_numeric_dtype(series) and not is_bool_dtype(series)


def _is_missing(value: Any) -> bool:
    """None, or pandas' NA (which can only exist once pandas is loaded: no import for the check)."""
    if value is None:
        return True
    pandas = sys.modules.get("pandas")
    return pandas is not None and value is pandas.NA


def _is_series(values: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(values, pandas.Series)


def _to_float(value: Any, strict: bool, column: str, row: int) -> float:
    """One numeric cell as a float; NaN stands for "use the mean" (missing or, if lax, bad)."""
    if _is_missing(value):
        return math.nan  # a missing value: imputed with the mean, even when strict
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.number)):
        if strict:
            raise InputError(f"column {column!r}: row {row} must be a number", column)
        return math.nan
    try:
        number = float(value)
    except ValueError:
        if strict:
            raise InputError(f"column {column!r}: row {row} holds non-numeric text", column) from None
        return math.nan
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if strict and not math.isfinite(number):
        raise InputError(f"column {column!r}: row {row} is NaN or infinite", column)
    return number if math.isfinite(number) else math.nan


def _category_key(value: Any, strict: bool, column: str, row: int) -> str | None:
    """The string a categorical cell is matched on, or None when it is missing.

    Fitting and transforming share this function, so JSON `true`, Python `True` and a pandas
    bool all become "True", and 1 and 1.0 both become "1".
    """
    if _is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(float(value))
    if strict:
        raise InputError(f"column {column!r}: row {row} must be a string, number or boolean", column)
    return None


@dataclass
class TabularPreprocessor:
    """Standardises numeric columns and one-hot encodes the others, in a fixed column layout.

    Attributes:
        columns: The input columns, in the order of their slots in the output.
        means: Training mean of each numeric column.
        stds: Training standard deviation (population) of each numeric column; 0 is stored as 1.
        categories: Sorted training categories of each categorical column.
    """

    columns: list[str]
    means: dict[str, float]
    stds: dict[str, float]
    categories: dict[str, list[str]]
    _offsets: dict[str, int] = field(init=False, repr=False, compare=False)
    _index: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)
    _numeric_layout: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)
    _categorical_offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = [c for c in self.columns if (c in self.means) == (c in self.categories)]
        if unknown or set(self.means) != set(self.stds):
            raise ValueError(f"each column must be exactly one of numeric or categorical: {unknown}")
        self._offsets, offset = {}, 0
        for name in self.columns:
            self._offsets[name] = offset
            offset += 1 if name in self.means else len(self.categories[name])
        self._index = {name: {c: i for i, c in enumerate(cats)} for name, cats in self.categories.items()}
        # Column-order arrays, so that encoding does its arithmetic once for all columns.
        numeric = [name for name in self.columns if name in self.means]
        self._numeric_layout = (
            np.array([self._offsets[n] for n in numeric], dtype=np.int64),
            np.array([self.means[n] for n in numeric], dtype=np.float64),
            np.array([self.stds[n] for n in numeric], dtype=np.float64),
        )
        categorical = [name for name in self.columns if name in self.categories]
        self._categorical_offsets = np.array([self._offsets[n] for n in categorical], dtype=np.int64)

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str]) -> TabularPreprocessor:
        """Learn the scaling and the categories from the training frame.

        Args:
            frame: The training rows.
            columns: The feature columns, in the order the output should use.

        Raises:
            InputError: A column is not in the frame.
        """
        _require_columns(frame.columns, columns)
        means: dict[str, float] = {}
        stds: dict[str, float] = {}
        categories: dict[str, list[str]] = {}
        for name in columns:
            series = frame[name]
            if _is_numeric_series(series):
                values = series.to_numpy(dtype=np.float64, na_value=np.nan)
                values = values[np.isfinite(values)]
                mean = float(values.mean()) if values.size else 0.0
                std = float(values.std()) if values.size else 1.0
                means[name], stds[name] = mean, std if std > 0 else 1.0  # a constant column: leave unscaled
            else:
                keys = {_category_key(v, False, name, i) for i, v in enumerate(series.to_numpy())}
                categories[name] = sorted(k for k in keys if k is not None)
        return cls(list(columns), means, stds, categories)

    @property
    def width(self) -> int:
        """Number of output features."""
        return len(self.means) + sum(len(c) for c in self.categories.values())

    def column_slots(self) -> dict[str, slice]:
        """The output features each input column fills: one for a numeric column, one per category.

        Encoding is row-wise and column by column, so shuffling a column's rows before encoding
        equals shuffling its slots after (what permutation importance relies on).
        """
        return {
            name: slice(offset, offset + (1 if name in self.means else len(self.categories[name])))
            for name, offset in self._offsets.items()
        }

    def transform(self, frame: pd.DataFrame, strict: bool = True) -> np.ndarray:
        """Encode a frame; extra columns are ignored and column order does not matter.

        A missing numeric value (None) becomes the mean. In a float column pandas stores missing
        values as NaN, which `strict` rejects like any NaN: offline callers pass `strict=False`.

        Args:
            frame: Rows holding at least the fitted columns.
            strict: Reject non-numeric text, NaN and infinity in numeric columns, and
                non-scalar categorical values, instead of imputing them.

        Returns:
            float32 array (len(frame), width).

        Raises:
            InputError: A column is missing or, when strict, holds a bad value.
        """
        _require_columns(frame.columns, self.columns)
        return self._encode(lambda name: frame[name], len(frame), strict)

    def transform_records(self, records: Sequence[Mapping[str, Any]], strict: bool = True) -> np.ndarray:
        """Encode rows given as dicts without building a DataFrame (the serving fast path).

        Args:
            records: One mapping of column name to value per row.
            strict: As in :meth:`transform`.

        Raises:
            InputError: A row is not a mapping, lacks a column or, when strict, holds a bad value.
        """
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise InputError(f"row {i} must be an object mapping column names to values")
            missing = [c for c in self.columns if c not in record]
            if missing:
                raise InputError(f"row {i} is missing column(s): {', '.join(map(repr, missing))}", missing[0])
        if len(records) == 1:
            return self._encode_one(records[0], strict)
        return self._encode(lambda name: [r[name] for r in records], len(records), strict)

    def _encode_one(self, record: Mapping[str, Any], strict: bool) -> np.ndarray:
        # One row (the REST service's usual request) in plain Python: a dozen small numpy calls
        # cost more than the row's arithmetic. Same checks in the same column order as
        # `_encode`, and the same float64 operations (IEEE either way), cast to float32 once.
        out = [0.0] * self.width
        offsets, means = self._offsets, self.means
        for name in self.columns:
            if name in means:
                value = _to_float(record[name], strict, name, 0)
                if value == value:  # NaN (missing) -> the mean -> 0
                    out[offsets[name]] = (value - means[name]) / self.stds[name]
            else:
                key = _category_key(record[name], strict, name, 0)
                slot = -1 if key is None else self._index[name].get(key, -1)
                if slot >= 0:  # unknown or missing categories stay all zeros
                    out[offsets[name] + slot] = 1.0
        return np.array([out], dtype=np.float32)

    def _encode(self, column: Callable[[str], Any], n: int, strict: bool) -> np.ndarray:
        # Columns are read and checked in order (the first bad one is the one reported); the
        # arithmetic then runs once over all columns: a one-row request costs a few numpy
        # calls, not a few per column. Each value sees the same float64 operations either way.
        numeric_offsets, means, stds = self._numeric_layout
        values = np.empty((n, len(means)), dtype=np.float64)
        slots = np.empty((n, len(self._categorical_offsets)), dtype=np.int64)
        i_num = i_cat = 0
        for name in self.columns:
            if name in self.means:
                values[:, i_num] = self._numeric(name, column(name), strict)
                i_num += 1
            else:
                index = self._index[name]
                keys = (_category_key(v, strict, name, i) for i, v in enumerate(column(name)))
                slots[:, i_cat] = np.fromiter((-1 if k is None else index.get(k, -1) for k in keys), np.int64, n)
                i_cat += 1
        out = np.zeros((n, self.width), dtype=np.float32)
        scaled = (values - means) / stds
        out[:, numeric_offsets] = np.where(np.isnan(values), 0.0, scaled)  # missing -> the mean -> 0
        rows, cols = np.nonzero(slots >= 0)  # unknown or missing categories stay all zeros
        out[rows, self._categorical_offsets[cols] + slots[rows, cols]] = 1.0
        return out

    def first_unknown_category(self, records: Sequence[Mapping[str, Any]]) -> tuple[int, str] | None:
        """The (row, column) of the first categorical value not seen in training, or None.

        Transforming encodes such a value as all zeros; a caller that wants to refuse it instead
        (the REST service, when configured so) asks here, with the same matching as fitting.
        """
        for name, index in self._index.items():
            for row, record in enumerate(records):
                key = _category_key(record.get(name), False, name, row)
                if key is not None and key not in index:
                    return row, name
        return None

    @staticmethod
    def _numeric(name: str, values: Any, strict: bool) -> np.ndarray:
        if _is_series(values) and _is_numeric_series(values):
            array = values.to_numpy(dtype=np.float64, na_value=np.nan)  # vectorised path for frames
            bad = ~np.isfinite(array)
            if strict and bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise InputError(f"column {name!r}: row {row} is NaN or infinite", name)
            return np.where(bad, np.nan, array)  # not in place: pandas may hand out a read-only view
        items = values.to_numpy() if _is_series(values) else values
        return np.array([_to_float(v, strict, name, i) for i, v in enumerate(items)], dtype=np.float64)

    def input_schema(self) -> list[dict[str, Any]]:
        """The expected columns: name, kind (`numeric` or `categorical`) and known categories."""
        return [
            {
                "name": name,
                "kind": "numeric" if name in self.means else "categorical",
                "categories": None if name in self.means else list(self.categories[name]),
            }
            for name in self.columns
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :meth:`from_dict` rebuilds an identical preprocessor."""
        return {
            "kind": "tabular",
            "columns": list(self.columns),
            "numeric": {n: {"mean": self.means[n], "std": self.stds[n]} for n in self.means},
            "categorical": {n: list(c) for n, c in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularPreprocessor:
        """Rebuild from :meth:`to_dict` output."""
        numeric = data["numeric"]
        return cls(
            columns=list(data["columns"]),
            means={n: float(v["mean"]) for n, v in numeric.items()},
            stds={n: float(v["std"]) for n, v in numeric.items()},
            categories={n: [str(c) for c in cats] for n, cats in data["categorical"].items()},
        )


def _require_columns(present: Any, required: Sequence[str]) -> None:
    have = set(present)
    missing = [c for c in required if c not in have]
    if missing:
        raise InputError(f"missing column(s): {', '.join(map(repr, missing))}", missing[0])


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass
class ImagePreprocessor:
    """Checks the image shape and range, scales to [0, 1] and standardises each channel.

    Attributes:
        channels: Expected channels (1 for greyscale; such images may also come as (n, h, w)).
        height: Expected height in pixels.
        width: Expected width in pixels.
        scale: Multiplier applied first: 1/255 for 8-bit sources, whose raw values must lie
            in [0, 255]; 1.0 for sources that are already floats.
        mean: Per-channel mean of the scaled training pixels.
        std: Per-channel standard deviation of the scaled training pixels (0 stored as 1).
    """

    channels: int
    height: int
    width: int
    scale: float
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, images: np.ndarray) -> ImagePreprocessor:
        """Learn the shape, scale and per-channel statistics from the training images.

        Args:
            images: (n, height, width) or (n, channels, height, width); uint8 gets scale 1/255.
        """
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[:, None]
        if array.ndim != 4 or len(array) == 0:
            raise InputError(f"training images must be (n, h, w) or (n, c, h, w) with n > 0, got {array.shape}")
        scale = UINT8_SCALE if array.dtype == np.uint8 else 1.0
        scaled = array.astype(np.float64) * scale
        mean = scaled.mean(axis=(0, 2, 3))
        std = scaled.std(axis=(0, 2, 3))
        std = np.where(std > 0, std, 1.0)
        _, channels, height, width = array.shape
        return cls(channels, height, width, scale, mean.tolist(), std.tolist())

    @property
    def shape(self) -> tuple[int, int, int]:
        """Expected (channels, height, width) of one image."""
        return (self.channels, self.height, self.width)

    def transform(self, images: Any, strict: bool = True) -> np.ndarray:
        """Validate and normalise a batch of images.

        Args:
            images: Array-like (n, c, h, w), or (n, h, w) when there is one channel; nested lists
                of numbers are accepted.
            strict: Also reject NaN, infinity and (for 8-bit sources) values outside [0, 255].
                The shape is always checked.

        Returns:
            float32 array (n, channels, height, width).

        Raises:
            InputError: Ragged or non-numeric input, a wrong shape or, when strict, a bad value.
        """
        array = self._as_array(images)
        if strict:
            if not np.isfinite(array).all():
                raise InputError("images hold NaN or infinite values")
            if self.scale == UINT8_SCALE and array.size and (array.min() < 0 or array.max() > 255):
                raise InputError("pixel values must lie in [0, 255]")
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((array.astype(np.float32) * np.float32(self.scale) - mean) / std).astype(np.float32)

    def _as_array(self, images: Any) -> np.ndarray:
        try:
            array = np.asarray(images)
        except ValueError:  # numpy refuses ragged nested lists
            raise InputError("images must be a regular array: every image needs the same shape") from None
        if array.dtype.kind not in "iuf":
            raise InputError("images must hold only numbers")
        expected = f"(n, {self.channels}, {self.height}, {self.width})"
        if self.channels == 1:
            expected += f" or (n, {self.height}, {self.width})"
            if array.ndim == 3:
                array = array[:, None]
        if array.ndim != 4 or array.shape[1:] != self.shape:
            raise InputError(f"images must have shape {expected}, got {tuple(array.shape)}")
        return array

    def input_schema(self) -> list[dict[str, Any]]:
        """One entry describing the expected image: shape and, for 8-bit sources, value range."""
        value_range = [0, 255] if self.scale == UINT8_SCALE else None
        return [{"name": "image", "kind": "image", "shape": list(self.shape), "range": value_range}]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description; :meth:`from_dict` rebuilds an identical preprocessor."""
        return {
            "kind": "image",
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessor:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            channels=int(data["channels"]),
            height=int(data["height"]),
            width=int(data["width"]),
            scale=float(data["scale"]),
            mean=[float(m) for m in data["mean"]],
            std=[float(s) for s in data["std"]],
        )


Preprocessor = TabularPreprocessor | ImagePreprocessor


def fit_preprocessor(
    modality: Literal["tabular", "image"],
    *,
    frame: pd.DataFrame | None = None,
    columns: Sequence[str] | None = None,
    images: np.ndarray | None = None,
) -> Preprocessor:
    """Fit the preprocessor of a modality on the training split.

    Args:
        modality: `tabular` (needs `frame` and `columns`) or `image` (needs `images`).
        frame: Training rows.
        columns: Feature columns of `frame`.
        images: Training images.
    """
    if modality == "tabular":
        if frame is None or columns is None:
            raise ValueError("a tabular preprocessor needs frame and columns")
        return TabularPreprocessor.fit(frame, columns)
    if modality == "image":
        if images is None:
            raise ValueError("an image preprocessor needs images")
        return ImagePreprocessor.fit(images)
    raise ValueError(f"unknown modality {modality!r}; known: image, tabular")


def preprocessor_from_dict(data: Mapping[str, Any]) -> Preprocessor:
    """Rebuild a preprocessor from its `to_dict()` output, whichever its kind."""
    kind = data.get("kind")
    if kind == "tabular":
        return TabularPreprocessor.from_dict(data)
    if kind == "image":
        return ImagePreprocessor.from_dict(data)
    raise ValueError(f"unknown preprocessor kind {kind!r}; known: image, tabular")
