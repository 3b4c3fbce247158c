"""benchmarks/serving.py without servers or wrk: its ratios, its verdicts on the targets, its memory reading."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def serving() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "benchmarks" / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(serving: ModuleType, name: str, startup: float, rss: float, points: list[tuple[str, int, float, float]]):
    result = serving.ServerRun(name, [], startup, rss, rss, rss)
    for case, connections, rps, p99 in points:
        result.points.append(serving.Point(name, case, connections, 100, 5.0, rps, 1.0, p99, p99, 0))
    return result


def test_ratios_and_targets(serving: ModuleType) -> None:
    ours = run(
        serving, "deepgate serve", 0.8, 140, [("single", 1, 800, 2), ("single", 32, 1000, 12), ("batch", 1, 30, 9)]
    )
    theirs = run(
        serving, "mlflow models serve", 9.0, 500, [("single", 1, 100, 5), ("single", 32, 400, 90), ("batch", 1, 15, 60)]
    )
    runs = {"deepgate serve": ours, "mlflow models serve": theirs}

    by = serving.ratios(runs)
    assert by == {"single c=1 req/s": 8.0, "single c=32 req/s": 2.5, "batch c=1 req/s": 2.0}
    verdicts = {target: met for target, _, met in serving.targets(runs, by, 32)}
    assert verdicts == {
        ">= 4x mlflow single-row req/s at 1 connection(s)": True,
        ">= 4x mlflow single-row req/s at 32 connection(s)": False,
        "p99 < 10 ms at 32 connections": False,
        "ready within 1 s of start": True,
        "< 150 MB resident per worker": True,
    }


def test_resident_memory_of_a_process_tree(serving: ModuleType) -> None:
    total, largest = serving.tree_rss_mb(os.getpid())
    assert total >= largest > 10  # this interpreter, with pytest loaded, holds more than 10 MB
