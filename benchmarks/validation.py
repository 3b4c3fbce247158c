"""Cost of the data validation gate on a large table: fast engine, Great Expectations, plain pandas.

Run (from the project root; a checkout that is not installed needs `PYTHONPATH=.`)::

    python benchmarks/validation.py                        # 1,000,000 rows x 10 columns
    python benchmarks/validation.py --rows 100000 --engines fast pandas --json out.json

The table is synthetic and arrests-like: an int id, a year (time column), two int and two
float features (one float with 0.5% nulls), three text features and a text label (pandas 3
`str` columns). The suite is learnt from the table itself with the default gate thresholds.
Two batches are validated: the clean table, and a corrupted copy (1% of ages out of range,
0.5% unknown colours, 2% nulls in a float, one duplicated id), whose failing checks cost
more (the engines collect examples of the bad values).

Each engine runs in its own child process, so that one engine's freed memory cannot hide
another's peak. In the child, after a warm-up on 1,000 rows:

- peak memory: the process's resident set size (psutil RSS) sampled every millisecond during
  one validation, minus the RSS just before it. This counts every allocation, Arrow's string
  buffers included; tracemalloc does not see Arrow's allocator, so its peak (Python and numpy
  allocations only) is shown beside it as a cross-check;
- wall seconds: the median of `--repeats` validations.

`pandas` is a plain-pandas reading of the same suite written here (one vectorised pandas
expression per expectation, pass/fail only, no examples of bad values); its verdicts are checked
against the fast engine's. The requirement for the default engine: at most 2 s and a peak of
at most 3x the table's in-memory size (pandas `memory_usage(deep=True)`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from components.config import DataConfig
from components.dataset import Dataset

DATA = DataConfig(source="parquet:synthetic.parquet", target="released", id="id", time="year")
MAX_SECONDS, MAX_MEMORY_RATIO = 2.0, 3.0
COLUMNS = ("engine", "batch", "wall s (median)", "peak RSS", "RSS / table", "tracemalloc peak", "failed checks")
console = Console(width=None if sys.stdout.isatty() else 120)


def make_table(rows: int, corrupt: bool = False, seed: int = 0) -> pd.DataFrame:
    """An arrests-like table of `rows` rows and 10 columns; `corrupt` breaks it four ways."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64"),
            "year": rng.integers(1997, 2003, rows),
            "age": rng.integers(12, 67, rows),
            "checks": rng.integers(0, 7, rows),
            "income": rng.lognormal(10, 0.5, rows),
            "score": rng.normal(0, 1, rows),
            "colour": pd.array(rng.choice(["Black", "White"], rows), dtype="str"),
            "sex": pd.array(rng.choice(["Female", "Male"], rows), dtype="str"),
            "employed": pd.array(rng.choice(["No", "Yes"], rows), dtype="str"),
            "released": pd.array(rng.choice(["No", "Yes"], rows, p=[0.17, 0.83]), dtype="str"),
        }
    )
    table.loc[rng.random(rows) < 0.005, "income"] = np.nan
    if corrupt:
        table.loc[rng.random(rows) < 0.01, "age"] = 150
        table.loc[rng.random(rows) < 0.005, "colour"] = "Purple"
        table.loc[rng.random(rows) < 0.02, "score"] = np.nan
        table.loc[1, "id"] = 0
    return table


# --- the plain-pandas baseline ----------------------------------------------------------------

_FAMILIES = {
    "numeric": lambda d: pd.api.types.is_numeric_dtype(d) and not pd.api.types.is_bool_dtype(d),
    "string": lambda d: pd.api.types.is_string_dtype(d) or isinstance(d, pd.CategoricalDtype),
    "boolean": pd.api.types.is_bool_dtype,
    "datetime": pd.api.types.is_datetime64_any_dtype,
}


def _between(values: pd.Series, kwargs: dict[str, Any]) -> bool:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    ok = pd.Series(True, index=values.index)
    if low is not None:
        ok &= values > low if kwargs.get("strict_min") else values >= low
    if high is not None:
        ok &= values < high if kwargs.get("strict_max") else values <= high
    return bool(ok.all())


def plain_pandas(table: pd.DataFrame, suite: dict[str, Any]) -> list[bool]:
    """Pass/fail of each runnable expectation of the suite, in plain pandas."""
    verdicts = []
    for expectation in suite["expectations"]:
        kind, kwargs = expectation["type"], expectation["kwargs"]
        if kind == "expect_table_columns_to_match_set":
            verdicts.append(set(table.columns) == set(kwargs["column_set"]))
            continue
        if kind == "expect_table_row_count_to_be_between":
            verdicts.append(kwargs["min_value"] <= len(table) <= kwargs["max_value"])
            continue
        column = table.get(kwargs["column"])
        if column is None or (kind.endswith("between") and not _FAMILIES["numeric"](column.dtype)):
            continue  # what validate_dataset skips as not runnable
        values = column.dropna()
        if kind == "expect_column_values_to_be_in_type_list":
            verdicts.append(_FAMILIES[expectation["meta"]["family"]](column.dtype))
        elif kind == "expect_column_values_to_not_be_null":
            verdicts.append(len(values) / len(table) >= kwargs.get("mostly", 1.0))
        elif kind == "expect_column_values_to_be_unique":
            verdicts.append(not values.duplicated().any())
        elif kind == "expect_column_values_to_be_between":
            verdicts.append(_between(values, kwargs))
        elif kind == "expect_column_values_to_be_in_set":
            verdicts.append(values.isin(kwargs["value_set"]).mean() >= kwargs.get("mostly", 1.0))
    return verdicts


# --- one engine, in a child process -----------------------------------------------------------


def _validator(engine: str, suite: dict[str, Any]) -> Any:
    if engine == "pandas":
        return lambda table: plain_pandas(table, suite)
    from components.validation import validate_dataset

    def validate(table: pd.DataFrame) -> list[bool]:
        report = validate_dataset(Dataset("tabular", table, DATA.target), suite, DATA, engine=engine)
        return [check.passed for check in report.checks]

    return validate


def _peak_rss(run: Any) -> tuple[int, Any]:
    """Peak RSS above the level before `run()`, sampled every millisecond, and its result."""
    import psutil

    process, done, peak = psutil.Process(), threading.Event(), [0]
    gc.collect()
    before = process.memory_info().rss

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], process.memory_info().rss) - before, result


def _peak_traced(run: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(engine: str, suite_path: Path, rows: int, corrupt: bool, repeats: int) -> dict[str, Any]:
    """Time and memory of one engine on one batch (run in a child process)."""
    suite = json.loads(suite_path.read_text())
    table = make_table(rows, corrupt)
    validate = _validator(engine, suite)
    validate(table.head(1000))  # warm-up: lazy imports and first-call costs
    rss, verdicts = _peak_rss(lambda: validate(table))
    traced = _peak_traced(lambda: validate(table))
    seconds = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        validate(table)
        seconds.append(time.perf_counter() - start)
    return {
        "engine": engine,
        "batch": "corrupt" if corrupt else "clean",
        "seconds": statistics.median(seconds),
        "all_seconds": seconds,
        "peak_rss_bytes": rss,
        "peak_traced_bytes": traced,
        "table_bytes": int(table.memory_usage(deep=True).sum()),
        "failed": sum(not v for v in verdicts),
        "verdicts": [bool(v) for v in verdicts],
    }


def _child(engine: str, suite_path: Path, args: argparse.Namespace, corrupt: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", engine, "--suite", str(suite_path), "--rows", str(args.rows)]
    command += ["--repeats", str(args.repeats)] + (["--corrupt"] if corrupt else [])
    env = os.environ | {"GX_ANALYTICS_ENABLED": "False"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the parent: build the suite, run every engine, print the table ----------------------------


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine and batch (median shown)")
    parser.add_argument("--engines", nargs="+", default=["fast", "gx", "pandas"], choices=["fast", "gx", "pandas"])
    parser.add_argument("--batches", nargs="+", default=["clean", "corrupt"], choices=["clean", "corrupt"])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--suite", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--corrupt", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def report(results: list[dict[str, Any]], rows: int) -> None:
    """Print the table and whether the default engine meets the requirement."""
    table = Table(title=f"Validating {rows:,} rows x 10 columns (table: {_mb(results[0]['table_bytes'])})")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("engine", "batch") else "right")
    for r in results:
        ratio = f"{r['peak_rss_bytes'] / r['table_bytes']:.2f}x"
        memory = (_mb(r["peak_rss_bytes"]), ratio, _mb(r["peak_traced_bytes"]))
        table.add_row(r["engine"], r["batch"], f"{r['seconds']:.3f}", *memory, str(r["failed"]))
    console.print(table)
    for batch in dict.fromkeys(r["batch"] for r in results):
        verdicts = {r["engine"]: r["verdicts"] for r in results if r["batch"] == batch}
        agree = len({json.dumps(v) for v in verdicts.values()}) == 1
        same = "identical" if agree else "DIFFERS"
        console.print(f"{batch} batch: pass/fail of every check {same} across {list(verdicts)}")
    for r in (r for r in results if r["engine"] == "fast"):
        ok = r["seconds"] <= MAX_SECONDS and r["peak_rss_bytes"] <= MAX_MEMORY_RATIO * r["table_bytes"]
        verdict = "meets" if ok else "MISSES"
        console.print(f"fast engine, {r['batch']} batch: {verdict} <= {MAX_SECONDS:g} s and <= {MAX_MEMORY_RATIO:g}x")
    console.print(f"machine: {os.cpu_count()} cores, load average {[round(x, 2) for x in os.getloadavg()]}")


def main() -> None:
    """Run the benchmark (or, with --child, one engine's measurement)."""
    args = parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.suite, args.rows, args.corrupt, args.repeats)))
        return
    from components.config import ValidationGate
    from components.validation import build_suite

    suite = build_suite(Dataset("tabular", make_table(args.rows), DATA.target), DATA, ValidationGate())
    results = []
    with tempfile.TemporaryDirectory() as folder:
        suite_path = Path(folder) / "suite.json"
        suite_path.write_text(json.dumps(suite))
        for batch in args.batches:
            for engine in args.engines:
                console.print(f"{engine} / {batch} ...", highlight=False)
                results.append(_child(engine, suite_path, args, batch == "corrupt"))
    report(results, args.rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
