"""Data validation gate: a Great Expectations suite learnt from a reference dataset.

`build_suite` derives expectations from a dataset that is known to be good (column set, dtype
family, null fraction, numeric ranges, categorical domains, id uniqueness, row-count bounds and
each class's share of the labels; for images the same on a per-image table of shape and pixel
statistics). The suite is plain GX 1.x JSON.

`validate_dataset` runs that suite on new data and turns every expectation result into a
plain-words :class:`Check`. Two engines run the same JSON:

- `fast` (default): a vectorised pandas/numpy executor of the expectation types `build_suite`
  emits. It reproduces GX's pandas semantics (null filtering, `mostly`, type lists checked value
  by value on text columns, the SUMMARY result's sample of unexpected values) without GX's
  per-run context and without copying text columns to Python objects, which is what makes GX
  take seconds and several times the table's memory on a million rows.
- `gx`: Great Expectations itself. Tests hold the two to the same verdicts and details.

`data_docs_html` renders GX's Data Docs for one validation into a folder, for MLflow.
Great Expectations is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from components.config import DataConfig, ValidationGate
from components.dataset import Dataset
from components.gates import Check, GateReport

SUITE_NAME = "deepgate_reference"
MAX_DOMAIN_SIZE = 50
# Defaults of gates.validation.max_rows_factor and min_class_share (components/config.py):
# a batch more than 10x the reference is far more likely a join gone wrong or a file appended
# twice than organic growth; a class whose share falls below a quarter of its reference share
# has all but vanished (a filter or a labelling tool gone wrong), which sampling never does.
_DATASOURCE, _ASSET, _BATCH = "deepgate", "dataset", "whole"
_PARTIAL = 20  # GX's `partial_unexpected_count` in the SUMMARY result format

Engine = Literal["fast", "gx"]

# Type names GX accepts both for a column's dtype and, on object columns, for each value.
# Both numpy names (int64 dtype) and native names (a Python int inside an object column) are
# listed, so a column passes whichever way pandas happened to store it.
_TYPE_LISTS: dict[str, list[str]] = {
    "numeric": ["int", "float", *(f"{k}{b}" for k in ("int", "uint") for b in (8, 16, 32, 64)), "float32", "float64"],
    "string": ["str"],
    "boolean": ["bool"],
    "datetime": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


def _gx() -> Any:
    # Analytics off before the first import: the pipeline must never phone home.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def _family(series: pd.Series) -> str:
    """numeric, string, boolean, datetime or other."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    # pandas 3 stores text as the `str` dtype; older tables use object: both are strings.
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(series):
        return "string"
    return "other"


def _gx_conversion(dtype: Any) -> str | None:
    """The dtype `_gx_frame` gives a column of this dtype, or None when it keeps it.

    GX compares a column's dtype against numpy type names and does not recognise pandas
    extension dtypes (pandas 3 `str`, `string`, `category`, `boolean`). Text and other
    extension columns become object columns, which GX checks value by value; nullable numbers
    become float64 (nulls as NaN).
    """
    if not isinstance(dtype, pd.api.extensions.ExtensionDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        return None
    numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    return "float64" if numeric else "object"


def _gx_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The table as GX's pandas backend checks it reliably (see :func:`_gx_conversion`)."""
    columns: dict[str, pd.Series] = {}
    for name in table.columns:
        series = table[name]
        target = _gx_conversion(series.dtype)
        columns[name] = series if target is None else series.astype(target)
    return pd.DataFrame(columns, index=table.index).reset_index(drop=True)


def image_table(dataset: Dataset) -> pd.DataFrame:
    """One row per image: its label, shape and pixel statistics.

    Args:
        dataset: An image dataset (`images` of shape (n, h, w) or (n, c, h, w)).
    """
    images = dataset.images
    if images is None:
        raise ValueError("image_table needs a dataset with images")
    flat = images.reshape(len(images), -1)
    table = {dataset.target: dataset.labels.to_numpy(), "height": images.shape[-2], "width": images.shape[-1]}
    if images.ndim == 4:
        table["channels"] = images.shape[1]
    table["pixel_min"] = flat.min(axis=1).astype("float64")
    table["pixel_max"] = flat.max(axis=1).astype("float64")
    table["pixel_std"] = flat.std(axis=1, dtype="float64")
    return pd.DataFrame(table)


def _native(values: np.ndarray | pd.Series) -> list[Any]:
    # Sorted plain Python values: the suite must be JSON and stable across runs.
    return sorted(pd.Series(values).dropna().unique().tolist(), key=lambda v: (str(type(v)), v))


# --- building the suite ---------------------------------------------------------------------


def _widened_range(values: pd.Series, margin: float) -> tuple[float, float]:
    """The reference's range, each side widened by `margin` x the range or by its tail.

    New data of the same kind reaches a little beyond the reference's extremes, and further
    on a long-tailed side (ages, amounts): there the distance from the 1st/99th percentile to
    the extreme is the better yardstick, and a fixed share of the range gives false alarms.
    A margin of 0 keeps the range exact.
    """
    low, high = float(values.min()), float(values.max())
    if margin == 0:
        return low, high
    q01, q99 = (float(q) for q in values.quantile([0.01, 0.99]))
    pad = margin * (high - low)
    return low - max(pad, q01 - low), high + max(pad, high - q99)


def _column_expectations(
    gx: Any, table: pd.DataFrame, column: str, gate: ValidationGate, roles: dict[str, str]
) -> list[Any]:
    E = gx.expectations
    series = table[column]
    family = _family(series)
    role = roles.get(column, "feature")
    out: list[Any] = []
    if family in _TYPE_LISTS:
        type_list = _TYPE_LISTS[family]
        out.append(E.ExpectColumnValuesToBeInTypeList(column=column, type_list=type_list, meta={"family": family}))
    # A row without a label cannot be trained on: the target gets no null allowance beyond
    # what the reference had.
    allowance = 0.0 if role == "target" else gate.max_null_fraction
    allowed_nulls = float(series.isna().mean()) + allowance
    if allowed_nulls < 1:
        # rounded so that the suite reads 0.99, not 0.9899999999999999
        out.append(
            E.ExpectColumnValuesToNotBeNull(column=column, mostly=round(1 - allowed_nulls, 6), meta={"role": role})
        )
    if role == "id":
        # ids are new in every batch: only their uniqueness is a property of the data.
        out.append(E.ExpectColumnValuesToBeUnique(column=column))
        return out
    values = series.dropna()
    if family == "numeric" and role == "feature" and len(values):
        low, high = _widened_range(values.astype("float64"), gate.range_margin)
        out.append(E.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))
    if role == "target" or (family == "string" and values.nunique() <= MAX_DOMAIN_SIZE):
        out.append(E.ExpectColumnValuesToBeInSet(column=column, value_set=_native(values)))
    return out


def _tabular_expectations(gx: Any, table: pd.DataFrame, data: DataConfig, gate: ValidationGate) -> list[Any]:
    # The time column only orders rows: a new batch is expected to bring later periods, so it
    # gets no range. The target gets its label domain but no range.
    roles = {data.target: "target"}
    if data.time is not None:
        roles[data.time] = "time"
    if data.id is not None:
        roles[data.id] = "id"
    out = [gx.expectations.ExpectTableColumnsToMatchSet(column_set=list(table.columns), exact_match=True)]
    for column in table.columns:
        out += _column_expectations(gx, table, column, gate, roles)
    return out


def _image_expectations(gx: Any, dataset: Dataset, gate: ValidationGate) -> list[Any]:
    E = gx.expectations
    table = image_table(dataset)
    low, high = float(table["pixel_min"].min()), float(table["pixel_max"].max())
    pad = gate.range_margin * (high - low)
    label_family = _family(table[dataset.target])
    if label_family not in _TYPE_LISTS:
        label_family = "string"
    out = [
        E.ExpectTableColumnsToMatchSet(column_set=list(table.columns), exact_match=True),
        E.ExpectColumnValuesToNotBeNull(column=dataset.target, meta={"role": "target"}),
        E.ExpectColumnValuesToBeInTypeList(
            column=dataset.target, type_list=_TYPE_LISTS[label_family], meta={"family": label_family}
        ),
        E.ExpectColumnValuesToBeInSet(column=dataset.target, value_set=_native(table[dataset.target])),
    ]
    shape = [c for c in ("height", "width", "channels") if c in table]
    out += [E.ExpectColumnValuesToBeInSet(column=c, value_set=_native(table[c])) for c in shape]
    out += [
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=low - pad),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", max_value=high + pad),
        # An all-constant image (blank scan, dead sensor) has zero spread.
        E.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=0.0, strict_min=True),
    ]
    return out


def _class_share_expectations(gx: Any, labels: pd.Series, column: str, min_class_share: float) -> list[Any]:
    """One expectation per reference class: its share of the labels stays above a floor.

    GX has no per-value share expectation, but "values in {c}" with `mostly=floor` is exactly
    "class c makes at least `floor` of the non-null labels".
    """
    if min_class_share <= 0:
        return []
    out = []
    for value, share in labels.dropna().value_counts(normalize=True).items():
        # rounded down: rounding must never make the floor stricter than asked
        floor = math.floor(min_class_share * share * 1e6) / 1e6
        meta = {"class_share": {"factor": min_class_share, "reference_share": round(float(share), 6)}}
        value_set = _native(np.array([value], dtype=object))
        out.append(
            gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=value_set, mostly=floor, meta=meta)
        )
    return out


def build_suite(
    dataset: Dataset,
    data: DataConfig,
    gate: ValidationGate,
    *,
    max_rows_factor: float | None = None,
    min_class_share: float | None = None,
) -> dict[str, Any]:
    """Derive an expectation suite from a reference dataset.

    Args:
        dataset: Data known to be good (e.g. the data the champion was trained on).
        data: The pipeline's data section (target, id, time columns).
        gate: Thresholds: null allowance, range margin, minimum rows.
        max_rows_factor: A batch may hold at most this many times the reference's rows.
        min_class_share: Each reference class must keep at least this fraction of its
            reference share of the labels (0 turns the class checks off).

    Returns:
        The suite in Great Expectations' JSON form (`ExpectationSuite.to_json_dict()`); its
        `meta["deepgate"]` records the modality and the reference row count.
    """
    gx = _gx()
    if dataset.images is not None:
        expectations = _image_expectations(gx, dataset, gate)
    else:
        expectations = _tabular_expectations(gx, dataset.table, data, gate)
    # Explicit arguments win; otherwise the gate's settings.
    max_rows_factor = gate.max_rows_factor if max_rows_factor is None else max_rows_factor
    min_class_share = gate.min_class_share if min_class_share is None else min_class_share
    expectations += _class_share_expectations(gx, dataset.labels, dataset.target, min_class_share)
    max_rows = max(gate.min_rows, math.ceil(max_rows_factor * len(dataset)))
    expectations.append(gx.expectations.ExpectTableRowCountToBeBetween(min_value=gate.min_rows, max_value=max_rows))
    meta = {"deepgate": {"modality": dataset.modality, "reference_rows": len(dataset)}}
    suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations, meta=meta)
    return suite.to_json_dict()


# --- running the suite ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """One expectation's result in GX's SUMMARY shape, whichever engine produced it."""

    kind: str
    kwargs: dict[str, Any]
    meta: dict[str, Any]
    severity: str
    success: bool
    result: dict[str, Any]
    error: str | None = None


def _key(kind: str, kwargs: dict[str, Any]) -> str:
    return json.dumps([kind, {k: v for k, v in kwargs.items() if k != "batch_id"}], sort_keys=True, default=str)


def _runnable(expectation: dict[str, Any], frame: pd.DataFrame) -> bool:
    """Whether an expectation can run on this frame without a GX exception.

    A missing column is already reported by the column-set check, and a range on a column that
    is no longer numeric by its dtype check; running them would only add exception noise.
    """
    column = expectation["kwargs"].get("column")
    if column is None:
        return True
    if column not in frame.columns:
        return False
    if expectation["type"] == "expect_column_values_to_be_between":
        dtype = frame[column].dtype
        return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    return True


def _run_gx(frame: pd.DataFrame, expectations: list[dict[str, Any]]) -> list[_Outcome]:
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(_DATASOURCE).add_dataframe_asset(_ASSET)
    batch = asset.add_batch_definition_whole_dataframe(_BATCH).get_batch(
        batch_parameters={"dataframe": _gx_frame(frame)}
    )
    suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)
    results = batch.validate(suite, result_format="SUMMARY").results
    outcomes = [_from_gx(r) for r in results]
    # GX returns results in no stable order: put them back in the suite's order.
    order = {_key(e["type"], e["kwargs"]): i for i, e in enumerate(expectations)}
    return sorted(outcomes, key=lambda o: order.get(_key(o.kind, o.kwargs), len(order)))


def _from_gx(result: Any) -> _Outcome:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    severity = str(getattr(config, "severity", "critical") or "critical")
    severity = severity.split(".")[-1].lower()  # an enum prints as FailureSeverity.CRITICAL
    error = _exception_text(result.exception_info)
    return _Outcome(config.type, kwargs, config.meta or {}, severity, bool(result.success), result.result or {}, error)


def _exception_text(info: Any) -> str | None:
    # GX reports exceptions either flat or keyed by metric id; take the first message.
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def validate_dataset(
    dataset: Dataset, suite: dict[str, Any], data: DataConfig, *, engine: Engine = "fast"
) -> GateReport:
    """Run a suite from :func:`build_suite` on a dataset.

    Args:
        dataset: The data to check.
        suite: The suite's JSON form.
        data: The pipeline's data section (kept for symmetry with `build_suite`; the suite
            itself names every column it checks).
        engine: `fast` (vectorised, default) or `gx` (Great Expectations); both give the same
            checks.

    Returns:
        A `validation` GateReport with one check per expectation; figures
        `validation_success_fraction` and `rows`. An expectation whose GX severity is not
        `critical` becomes a `warn` check.
    """
    del data  # the suite carries everything; the argument keeps the gate signatures uniform
    if engine not in ("fast", "gx"):
        raise ValueError(f"engine must be 'fast' or 'gx', got {engine!r}")
    expected = suite.get("meta", {}).get("deepgate", {}).get("modality", dataset.modality)
    report = GateReport("validation", figures={"rows": float(len(dataset))})
    if expected != dataset.modality or (expected == "image") != (dataset.images is not None):
        report.checks.append(Check("modality", False, f"suite is for {expected} data, got {dataset.modality} data"))
        report.figures["validation_success_fraction"] = 0.0
        return report
    frame = image_table(dataset) if dataset.images is not None else dataset.table
    runnable = [e for e in suite["expectations"] if _runnable(e, frame)]
    outcomes = _run_fast(frame, runnable) if engine == "fast" else _run_gx(frame, runnable)
    report.checks = [_to_check(o) for o in outcomes]
    passed = sum(c.passed for c in report.checks)
    report.figures["validation_success_fraction"] = passed / len(report.checks) if report.checks else 1.0
    return report


# --- the fast engine: GX's pandas semantics, vectorised ---------------------------------------

_NATIVE_TYPES: dict[str, tuple[type, ...]] = {
    "none": (type(None),),
    "bool": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (float,),
    "bytes": (bytes,),
    "complex": (complex,),
    "str": (str,),
    "string_types": (str,),
    "list": (list,),
    "dict": (dict,),
}


def _pandas_type(name: str) -> list[type]:
    found = [getattr(owner, name, None) for owner in (pd, pd.core.dtypes.dtypes)]
    return [t for t in found if isinstance(t, type)]


def _value_types(type_list: list[str]) -> tuple[type, ...]:
    """The classes a value of an object column may be an instance of (GX's in_type_list metric)."""
    types: list[type] = []
    for name in type_list:
        try:
            types.append(np.dtype(name).type)
        except TypeError:
            types += _pandas_type(name)
        types += _NATIVE_TYPES.get(name.lower(), ())
    if not types:
        raise ValueError(f"No recognized numpy/python type in list: {type_list}")
    return tuple(types)


def _dtype_types(type_list: list[str]) -> list[Any]:
    """What a non-object column's dtype is compared with (GX's `_validate_pandas`)."""
    types: list[Any] = []
    for name in type_list:
        try:
            types += [np.dtype(name).type, np.dtype(name)]
        except TypeError:
            for t in _pandas_type(name):
                types.append(t)
                if issubclass(t, pd.api.extensions.ExtensionDtype):
                    with contextlib.suppress(TypeError):  # an extension dtype that needs arguments
                        types.append(t())
        types += _NATIVE_TYPES.get(name.lower(), ())
    return types


class _Batch:
    """The table under check; each column's non-null values are computed once per run."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.table = table
        self.rows = len(table)
        self._values: dict[str, pd.Series] = {}
        self._codes: dict[str, tuple[np.ndarray, list[Any]]] = {}

    def values(self, column: str) -> pd.Series:
        """The column's non-null values, as GX receives them from `_gx_frame` (text not copied)."""
        if column not in self._values:
            series = self.table[column]
            if _gx_conversion(series.dtype) == "float64":
                series = series.astype("float64")
            present = series.notna().to_numpy()
            self._values[column] = series if present.all() else series[present]
        return self._values[column]

    def factorized(self, column: str) -> tuple[np.ndarray, list[Any]]:
        """Codes of the non-null values and the distinct values they index (Python objects)."""
        if column not in self._codes:
            codes, distinct = pd.factorize(self.values(column))
            self._codes[column] = codes, distinct.tolist()
        return self._codes[column]


def _value_counts(sample: list[Any]) -> list[dict[str, Any]]:
    try:
        pairs = sorted(Counter(sample).most_common(_PARTIAL), key=lambda x: (-x[1], x[0]))
    except TypeError:
        return [{"error": "partial_exception_counts requires a hashable type"}]
    return [{"value": value, "count": count} for value, count in pairs]


def _map_result(values: pd.Series, unexpected: np.ndarray, rows: int, mostly: float | None) -> tuple[bool, dict]:
    """GX's verdict and SUMMARY result of a column map expectation over non-null `values`."""
    count, considered = int(unexpected.sum()), len(values)
    success = rows == 0 or considered == 0 or (considered - count) / considered >= (1.0 if mostly is None else mostly)
    sample = values.iloc[np.flatnonzero(unexpected)[:_PARTIAL]].tolist()
    result = {
        "element_count": rows,
        "unexpected_count": count,
        "unexpected_percent": count / considered * 100 if rows and considered else None,
        "partial_unexpected_list": sample,
        "partial_unexpected_counts": _value_counts(sample),
    }
    return success, result


def _fast_columns(batch: _Batch, kwargs: dict[str, Any]) -> tuple[bool, dict]:
    expected, actual = set(kwargs.get("column_set") or []), {str(c) for c in batch.table.columns}
    result: dict[str, Any] = {"observed_value": sorted(actual)}
    mismatched = {"unexpected": sorted(actual - expected), "missing": sorted(expected - actual)}
    mismatched = {k: v for k, v in mismatched.items() if v}
    if mismatched:
        result["details"] = {"mismatched": mismatched}
    return not mismatched or kwargs.get("exact_match", True) is False, result


def _fast_row_count(batch: _Batch, kwargs: dict[str, Any]) -> tuple[bool, dict]:
    n, low, high = batch.rows, kwargs.get("min_value"), kwargs.get("max_value")
    above = low is None or (n > low if kwargs.get("strict_min") else n >= low)
    below = high is None or (n < high if kwargs.get("strict_max") else n <= high)
    return above and below, {"observed_value": n}


def _fast_not_null(batch: _Batch, kwargs: dict[str, Any]) -> tuple[bool, dict]:
    # Unlike other map expectations, nulls are the unexpected values and the share is over all rows.
    missing = batch.table[kwargs["column"]].isna().to_numpy()
    count, rows = int(missing.sum()), batch.rows
    success = rows == 0 or (rows - count) / rows >= kwargs.get("mostly", 1.0)
    sample = batch.table[kwargs["column"]].iloc[np.flatnonzero(missing)[:_PARTIAL]].tolist()
    percent = count / rows * 100 if rows else None
    result = {"element_count": rows, "unexpected_count": count, "unexpected_percent": percent}
    return success, {**result, "partial_unexpected_list": sample}


def _is_instance(values: pd.Series, types: tuple[type, ...]) -> np.ndarray:
    if isinstance(values.dtype, pd.StringDtype):  # every value is a Python str: no loop needed
        return np.full(len(values), issubclass(str, types))
    objects = values.to_numpy(dtype=object)
    return np.fromiter((isinstance(v, types) for v in objects), dtype=bool, count=len(objects))


def _fast_type_list(batch: _Batch, kwargs: dict[str, Any]) -> tuple[bool, dict]:
    column, type_list = kwargs["column"], kwargs.get("type_list")
    dtype = batch.table[column].dtype
    seen = np.dtype(conversion) if (conversion := _gx_conversion(dtype)) else dtype
    if seen != np.dtype(object) or type_list is None:
        # GX checks the dtype itself unless the column holds Python objects.
        return type_list is None or seen in _dtype_types(type_list), {"observed_value": seen.type.__name__}
    values = batch.values(column)
    return _map_result(values, ~_is_instance(values, _value_types(type_list)), batch.rows, kwargs.get("mostly"))


def _fast_unique(batch: _Batch, kwargs: dict[str, Any]) -> tuple[bool, dict]:
    values = batch.values(kwargs["column"])
    return _map_result(values, values.duplicated(keep=False).to_numpy(), batch.rows, kwargs.get("mostly"))


def _fast_between(batch: _Batch, kwargs: dict[str, Any]) -> tuple[bool, dict]:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is None and high is None:
        raise ValueError("min_value and max_value cannot both be None")
    if low is not None and high is not None and low > high:
        raise ValueError("min_value cannot be greater than max_value")
    values = batch.values(kwargs["column"])
    array = values.to_numpy()
    inside = np.ones(len(array), dtype=bool)
    if low is not None:
        inside &= array > low if kwargs.get("strict_min") else array >= low
    if high is not None:
        inside &= array < high if kwargs.get("strict_max") else array <= high
    return _map_result(values, ~inside, batch.rows, kwargs.get("mostly"))


def _fast_in_set(batch: _Batch, kwargs: dict[str, Any]) -> tuple[bool, dict]:
    values, value_set = batch.values(kwargs["column"]), kwargs.get("value_set")
    if value_set is None:
        unexpected = np.zeros(len(values), dtype=bool)
    elif isinstance(values.dtype, np.dtype) and values.dtype != np.dtype(object):
        unexpected = ~values.isin(value_set).to_numpy()
    else:
        # GX compares Python objects by hash and equality; the distinct values are few, so
        # judge each once and spread the verdict back through the factorised codes.
        codes, distinct = batch.factorized(kwargs["column"])
        allowed = set(value_set)
        unexpected = np.array([v not in allowed for v in distinct], dtype=bool)[codes]
    return _map_result(values, unexpected, batch.rows, kwargs.get("mostly"))


_FAST: dict[str, Callable[[_Batch, dict[str, Any]], tuple[bool, dict]]] = {
    "expect_table_columns_to_match_set": _fast_columns,
    "expect_table_row_count_to_be_between": _fast_row_count,
    "expect_column_values_to_be_in_type_list": _fast_type_list,
    "expect_column_values_to_not_be_null": _fast_not_null,
    "expect_column_values_to_be_unique": _fast_unique,
    "expect_column_values_to_be_between": _fast_between,
    "expect_column_values_to_be_in_set": _fast_in_set,
}


def _run_fast(frame: pd.DataFrame, expectations: list[dict[str, Any]]) -> list[_Outcome]:
    batch, outcomes = _Batch(frame), []
    for expectation in expectations:
        kind, kwargs = expectation["type"], expectation["kwargs"]
        meta, severity = expectation.get("meta") or {}, expectation.get("severity") or "critical"
        runner = _FAST.get(kind)
        if runner is None:
            error = "the fast engine does not implement this expectation; validate with engine='gx'"
            outcomes.append(_Outcome(kind, kwargs, meta, severity, False, {}, error))
            continue
        try:
            success, result = runner(batch, kwargs)
        except (TypeError, ValueError, KeyError) as error:
            # Like GX: a check that cannot run is reported as failed, the others still run.
            outcomes.append(_Outcome(kind, kwargs, meta, severity, False, {}, str(error)))
            continue
        outcomes.append(_Outcome(kind, kwargs, meta, severity, bool(success), result))
    return outcomes


# --- plain-words checks ---------------------------------------------------------------------


def _examples(result: dict[str, Any]) -> list[Any]:
    counts = [item for item in result.get("partial_unexpected_counts") or [] if "value" in item]
    if counts:
        return [item["value"] for item in counts][:5]
    return list(dict.fromkeys(result.get("partial_unexpected_list") or []))[:5]


def _bounds(kwargs: dict[str, Any]) -> str:
    parts = []
    if kwargs.get("min_value") is not None:
        parts.append(f"{'>' if kwargs.get('strict_min') else '>='} {kwargs['min_value']:.4g}")
    if kwargs.get("max_value") is not None:
        parts.append(f"{'<' if kwargs.get('strict_max') else '<='} {kwargs['max_value']:.4g}")
    return " and ".join(parts)


def _rows_wanted(kwargs: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if high is None:
        return f"at least {low} rows"
    return f"{low} to {high} rows" if low is not None else f"at most {high} rows"


def _class_of(kwargs: dict[str, Any]) -> Any:
    return (kwargs.get("value_set") or [None])[0]


def _describe(kind: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    """What an expectation asks, in plain words."""
    column = kwargs.get("column")
    null_share = 100 * (1 - kwargs.get("mostly", 1))
    if "class_share" in meta:
        return f"column '{column}': class {_class_of(kwargs)!r} at least {100 * kwargs.get('mostly', 0):.1f}% of labels"
    texts = {
        "expect_table_columns_to_match_set": f"columns are exactly {sorted(kwargs.get('column_set') or [])}",
        "expect_table_row_count_to_be_between": _rows_wanted(kwargs),
        "expect_column_values_to_be_in_type_list": f"column '{column}': {meta.get('family', 'typed')} values",
        "expect_column_values_to_not_be_null": f"column '{column}': at most {null_share:.1f}% nulls",
        "expect_column_values_to_be_between": f"column '{column}': values {_bounds(kwargs)}",
        "expect_column_values_to_be_in_set": f"column '{column}': values in {kwargs.get('value_set')}",
        "expect_column_values_to_be_unique": f"column '{column}': values unique",
    }
    return texts.get(kind, f"{kind}({column})")


def _row_count_problem(kwargs: dict[str, Any], n: Any) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and n is not None and n < low:
        return f"table has {n} rows, at least {low} required"
    if high is not None and n is not None and n > high:
        return f"table has {n} rows, at most {high} allowed (far more than the reference: a bad join or double append?)"
    return f"table has {n} rows, {_rows_wanted(kwargs)} required"


def _share_problem(kwargs: dict[str, Any], meta: dict[str, Any], result: dict[str, Any]) -> str:
    info = meta["class_share"]
    observed = 100 - (result.get("unexpected_percent") or 0.0)
    return (
        f"column '{kwargs.get('column')}': class {_class_of(kwargs)!r} is {observed:.1f}% of labels, at least "
        f"{100 * kwargs.get('mostly', 0):.1f}% expected ({info['factor']:g}x its reference share of "
        f"{100 * info['reference_share']:.1f}%)"
    )


def _problem(kind: str, kwargs: dict[str, Any], meta: dict[str, Any], result: dict[str, Any]) -> str:
    """What was wrong, in plain words, for a failed expectation."""
    column = kwargs.get("column")
    where = f"column '{column}'"
    n_bad = result.get("unexpected_count", 0)
    if kind == "expect_table_columns_to_match_set":
        mismatch = result.get("details", {}).get("mismatched", {})
        parts = [f"missing column '{c}'" for c in mismatch.get("missing", [])]
        parts += [f"unexpected column '{c}'" for c in mismatch.get("unexpected", [])]
        return "; ".join(parts) or f"columns {result.get('observed_value')} do not match"
    if kind == "expect_table_row_count_to_be_between":
        return _row_count_problem(kwargs, result.get("observed_value"))
    if kind == "expect_column_values_to_be_in_type_list":
        family = meta.get("family", "the expected type")
        if "observed_value" in result:
            return f"{where}: dtype {result['observed_value']}, expected {family}"
        return f"{where}: {n_bad} values are not {family}, e.g. {_examples(result)}"
    if kind == "expect_column_values_to_not_be_null":
        share = result.get("unexpected_percent") or 0.0
        allowed = 100 * (1 - kwargs.get("mostly", 1))
        if meta.get("role") == "target":
            return f"{where}: {share:.1f}% of rows have no label, at most {allowed:.1f}% allowed"
        return f"{where}: {share:.1f}% nulls, at most {allowed:.1f}% allowed"
    if kind == "expect_column_values_to_be_between":
        return f"{where}: {n_bad} values not {_bounds(kwargs)}, e.g. {_examples(result)}"
    if kind == "expect_column_values_to_be_in_set":
        if "class_share" in meta:
            return _share_problem(kwargs, meta, result)
        return f"{where}: unexpected values {_examples(result)}"
    if kind == "expect_column_values_to_be_unique":
        return f"{where}: {n_bad} rows share a value, e.g. {_examples(result)}"
    return f"{_describe(kind, kwargs, meta)}: failed"


def _observed(
    kind: str, kwargs: dict[str, Any], meta: dict[str, Any], result: dict[str, Any]
) -> tuple[float | None, float | None]:
    if kind == "expect_column_values_to_not_be_null" and result.get("unexpected_percent") is not None:
        return result["unexpected_percent"] / 100, round(1 - kwargs.get("mostly", 1), 6)
    if kind == "expect_table_row_count_to_be_between" and result.get("observed_value") is not None:
        n, high = float(result["observed_value"]), kwargs.get("max_value")
        return n, float(high if high is not None and n > high else kwargs.get("min_value") or 0)
    if "class_share" in meta and result.get("unexpected_percent") is not None:
        return 1 - result["unexpected_percent"] / 100, float(kwargs.get("mostly", 0))
    if "unexpected_count" in result:
        return float(result["unexpected_count"]), 0.0
    return None, None


def _check_name(kind: str, kwargs: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    column = kwargs.get("column")
    if meta and "class_share" in meta:
        return f"{kind}({column}={_class_of(kwargs)!r})"
    return f"{kind}({column})" if column else kind


def _to_check(outcome: _Outcome) -> Check:
    kind, kwargs, meta, result = outcome.kind, outcome.kwargs, outcome.meta, outcome.result
    name = _check_name(kind, kwargs, meta)
    severity: Literal["fail", "warn"] = "fail" if outcome.severity == "critical" else "warn"
    if outcome.error is not None:
        return Check(
            name,
            False,
            f"{_describe(kind, kwargs, meta)}: could not be checked ({outcome.error})",
            None,
            None,
            severity,
        )
    value, threshold = _observed(kind, kwargs, meta, result)
    if outcome.success:
        return Check(name, True, _describe(kind, kwargs, meta), value, threshold, severity)
    return Check(name, False, _problem(kind, kwargs, meta, result), value, threshold, severity)


# --- reports --------------------------------------------------------------------------------


def data_docs_html(dataset: Dataset, suite: dict[str, Any], out_dir: Path) -> Path:
    """Render Great Expectations' Data Docs for one validation of `dataset` into a folder.

    GX validates the data itself here (the Data Docs renderers need its own results), in an
    ephemeral context whose only docs site is `out_dir`; nothing is written anywhere else and
    nothing is fetched. The pages link bootstrap/jQuery from public CDNs for their styling, so
    they read best with a network connection, but all content is in the HTML.

    Args:
        dataset: The validated data.
        suite: The suite's JSON form (from :func:`build_suite`).
        out_dir: The folder to write; replaced if it exists (log it with
            `mlflow.log_artifacts(out_dir, "validation/data_docs")`).

    Returns:
        `out_dir`, holding `index.html`, the suite's page under `expectations/` and the
        validation's page under `validations/`.
    """
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = image_table(dataset) if dataset.images is not None else dataset.table
    expectations = [e for e in suite["expectations"] if _runnable(e, frame)]
    shutil.rmtree(out_dir, ignore_errors=True)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for site in list(context.get_config().data_docs_sites or {}):
        context.delete_data_docs_site(site)  # the default site writes to a temporary folder
    backend = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out_dir)}
    context.add_data_docs_site("deepgate", {"class_name": "SiteBuilder", "store_backend": backend})
    batch = context.data_sources.add_pandas(_DATASOURCE).add_dataframe_asset(_ASSET)
    definition = batch.add_batch_definition_whole_dataframe(_BATCH)
    stored = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=SUITE_NAME, data=definition, suite=stored)
    )
    action = gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["deepgate"])
    checkpoint = gx.Checkpoint(
        name=SUITE_NAME, validation_definitions=[validation], actions=[action], result_format="SUMMARY"
    )
    context.checkpoints.add(checkpoint).run(batch_parameters={"dataframe": _gx_frame(frame)})
    return out_dir


def render_suite_summary(suite: dict[str, Any]) -> str:
    """A markdown list of what a suite expects, for Prefect artifacts and the MLflow run."""
    info = suite.get("meta", {}).get("deepgate", {})
    lines = [
        f"### Expectation suite `{suite.get('name')}`",
        "",
        f"{len(suite['expectations'])} expectations, learnt from {info.get('reference_rows', '?')} "
        f"{info.get('modality', '')} rows.",
        "",
    ]
    lines += [f"- {_describe(e['type'], e['kwargs'], e.get('meta') or {})}" for e in suite["expectations"]]
    return "\n".join(lines)
