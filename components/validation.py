"""Data validation gate: a Great Expectations suite learnt from a reference dataset.

`build_suite` derives expectations from a dataset that is known to be good (column set, dtype
family, null fraction, numeric ranges, categorical domains, id uniqueness, row count; for images
the same on a per-image table of shape and pixel statistics). `validate_dataset` runs that suite
on new data and turns every expectation result into a plain-words :class:`Check`.

Great Expectations is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from components.config import DataConfig, ValidationGate
from components.dataset import Dataset
from components.gates import Check, GateReport

SUITE_NAME = "deepgate_reference"
MAX_DOMAIN_SIZE = 50
_DATASOURCE, _ASSET, _BATCH = "deepgate", "dataset", "whole"

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


def _gx_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The table as GX's pandas backend checks it reliably.

    GX compares a column's dtype against numpy type names, and does not recognise pandas
    extension dtypes (pandas 3 `str`, `string`, `category`, `boolean`). Text and other
    extension columns become object columns, which GX checks value by value; nullable numbers
    become float64 (nulls as NaN).
    """
    columns: dict[str, pd.Series] = {}
    for name in table.columns:
        series = table[name]
        dtype = series.dtype
        if isinstance(dtype, pd.api.extensions.ExtensionDtype) and not pd.api.types.is_datetime64_any_dtype(dtype):
            if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
                series = series.astype("float64")
            else:
                series = series.astype(object)
        columns[name] = series
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
    allowed_nulls = float(series.isna().mean()) + gate.max_null_fraction
    if allowed_nulls < 1:
        # rounded so that the suite reads 0.99, not 0.9899999999999999
        out.append(E.ExpectColumnValuesToNotBeNull(column=column, mostly=round(1 - allowed_nulls, 6)))
    if role == "id":
        # ids are new in every batch: only their uniqueness is a property of the data.
        out.append(E.ExpectColumnValuesToBeUnique(column=column))
        return out
    values = series.dropna()
    if family == "numeric" and role == "feature" and len(values):
        low, high = float(values.min()), float(values.max())
        pad = gate.range_margin * (high - low)
        out.append(E.ExpectColumnValuesToBeBetween(column=column, min_value=low - pad, max_value=high + pad))
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
        E.ExpectColumnValuesToNotBeNull(column=dataset.target),
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


def build_suite(dataset: Dataset, data: DataConfig, gate: ValidationGate) -> dict[str, Any]:
    """Derive an expectation suite from a reference dataset.

    Args:
        dataset: Data known to be good (e.g. the data the champion was trained on).
        data: The pipeline's data section (target, id, time columns).
        gate: Thresholds: null allowance, range margin, minimum rows.

    Returns:
        The suite in Great Expectations' JSON form (`ExpectationSuite.to_json_dict()`); its
        `meta["deepgate"]` records the modality and the reference row count.
    """
    gx = _gx()
    if dataset.images is not None:
        expectations = _image_expectations(gx, dataset, gate)
    else:
        expectations = _tabular_expectations(gx, dataset.table, data, gate)
    expectations.append(gx.expectations.ExpectTableRowCountToBeBetween(min_value=gate.min_rows))
    meta = {"deepgate": {"modality": dataset.modality, "reference_rows": len(dataset)}}
    suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations, meta=meta)
    return suite.to_json_dict()


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


def _run_suite(frame: pd.DataFrame, expectations: list[dict[str, Any]]) -> list[Any]:
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas(_DATASOURCE).add_dataframe_asset(_ASSET)
    batch = asset.add_batch_definition_whole_dataframe(_BATCH).get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)
    return list(batch.validate(suite, result_format="SUMMARY").results)


def validate_dataset(dataset: Dataset, suite: dict[str, Any], data: DataConfig) -> GateReport:
    """Run a suite from :func:`build_suite` on a dataset.

    Args:
        dataset: The data to check.
        suite: The suite's JSON form.
        data: The pipeline's data section (kept for symmetry with `build_suite`; the suite
            itself names every column it checks).

    Returns:
        A `validation` GateReport with one check per expectation; figures
        `validation_success_fraction` and `rows`.
    """
    del data  # the suite carries everything; the argument keeps the gate signatures uniform
    expected = suite.get("meta", {}).get("deepgate", {}).get("modality", dataset.modality)
    report = GateReport("validation", figures={"rows": float(len(dataset))})
    if expected != dataset.modality or (expected == "image") != (dataset.images is not None):
        report.checks.append(Check("modality", False, f"suite is for {expected} data, got {dataset.modality} data"))
        report.figures["validation_success_fraction"] = 0.0
        return report
    frame = image_table(dataset) if dataset.images is not None else _gx_frame(dataset.table)
    runnable = [e for e in suite["expectations"] if _runnable(e, frame)]
    # GX returns results in no stable order: put them back in the suite's order.
    order = {_check_name(e["type"], e["kwargs"]): i for i, e in enumerate(runnable)}
    checks = [_to_check(r) for r in _run_suite(frame, runnable)]
    report.checks = sorted(checks, key=lambda c: order.get(c.name, len(order)))
    passed = sum(c.passed for c in report.checks)
    report.figures["validation_success_fraction"] = passed / len(report.checks) if report.checks else 1.0
    return report


def _examples(result: dict[str, Any]) -> list[Any]:
    counts = result.get("partial_unexpected_counts")
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


def _describe(kind: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    """What an expectation asks, in plain words."""
    column = kwargs.get("column")
    null_share = 100 * (1 - kwargs.get("mostly", 1))
    texts = {
        "expect_table_columns_to_match_set": f"columns are exactly {sorted(kwargs.get('column_set') or [])}",
        "expect_table_row_count_to_be_between": f"at least {kwargs.get('min_value')} rows",
        "expect_column_values_to_be_in_type_list": f"column '{column}': {meta.get('family', 'typed')} values",
        "expect_column_values_to_not_be_null": f"column '{column}': at most {null_share:.1f}% nulls",
        "expect_column_values_to_be_between": f"column '{column}': values {_bounds(kwargs)}",
        "expect_column_values_to_be_in_set": f"column '{column}': values in {kwargs.get('value_set')}",
        "expect_column_values_to_be_unique": f"column '{column}': values unique",
    }
    return texts.get(kind, f"{kind}({column})")


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
        return f"table has {result.get('observed_value')} rows, at least {kwargs.get('min_value')} required"
    if kind == "expect_column_values_to_be_in_type_list":
        family = meta.get("family", "the expected type")
        if "observed_value" in result:
            return f"{where}: dtype {result['observed_value']}, expected {family}"
        return f"{where}: {n_bad} values are not {family}, e.g. {_examples(result)}"
    if kind == "expect_column_values_to_not_be_null":
        share = result.get("unexpected_percent", 0.0)
        return f"{where}: {share:.1f}% nulls, at most {100 * (1 - kwargs.get('mostly', 1)):.1f}% allowed"
    if kind == "expect_column_values_to_be_between":
        return f"{where}: {n_bad} values not {_bounds(kwargs)}, e.g. {_examples(result)}"
    if kind == "expect_column_values_to_be_in_set":
        return f"{where}: unexpected values {_examples(result)}"
    if kind == "expect_column_values_to_be_unique":
        return f"{where}: {n_bad} rows share a value, e.g. {_examples(result)}"
    return f"{_describe(kind, kwargs, meta)}: failed"


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


def _observed(kind: str, kwargs: dict[str, Any], result: dict[str, Any]) -> tuple[float | None, float | None]:
    if kind == "expect_column_values_to_not_be_null" and "unexpected_percent" in result:
        return result["unexpected_percent"] / 100, round(1 - kwargs.get("mostly", 1), 6)
    if kind == "expect_table_row_count_to_be_between" and result.get("observed_value") is not None:
        return float(result["observed_value"]), float(kwargs.get("min_value") or 0)
    if "unexpected_count" in result:
        return float(result["unexpected_count"]), 0.0
    return None, None


def _check_name(kind: str, kwargs: dict[str, Any]) -> str:
    column = kwargs.get("column")
    return f"{kind}({column})" if column else kind


def _to_check(outcome: Any) -> Check:
    config = outcome.expectation_config
    kind, meta = config.type, config.meta or {}
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    result = outcome.result or {}
    name = _check_name(kind, kwargs)
    value, threshold = _observed(kind, kwargs, result)
    error = _exception_text(outcome.exception_info)
    if error is not None:
        return Check(name, False, f"{_describe(kind, kwargs, meta)}: could not be checked ({error})")
    if outcome.success:
        return Check(name, True, _describe(kind, kwargs, meta), value, threshold)
    return Check(name, False, _problem(kind, kwargs, meta, result), value, threshold)


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
