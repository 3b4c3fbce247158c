"""benchmarks/serving.py without servers or wrk: its ratios, its verdicts on the targets, its memory reading."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def serving() -> ModuleType:
    return load_script("benchmarks/serving.py", "bench_serving")


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


def test_a_restart_is_judged_on_its_own(serving: ModuleType) -> None:
    ours = run(serving, "deepgate serve", 6.0, 100, [("single", 1, 800, 2), ("single", 32, 1000, 8)])
    ours.restart_s = 0.7
    theirs = run(serving, "mlflow models serve", 9.0, 500, [("single", 1, 100, 5), ("single", 32, 200, 90)])
    runs = {"deepgate serve": ours, "mlflow models serve": theirs}
    verdicts = {target: met for target, _, met in serving.targets(runs, serving.ratios(runs), 32)}
    assert verdicts["ready within 1 s of start"] is False
    assert verdicts["ready within 1 s of a restart (champion cached)"] is True
    assert verdicts["p99 < 10 ms at 32 connections"] is True


def test_rounds_combine_into_one_point(serving: ModuleType) -> None:
    rounds = [
        serving.Point("s", "single", 1, 100, 2.0, 50.0, 1.0, 4.0, 9.0, 0),
        serving.Point("s", "single", 1, 300, 2.0, 150.0, 3.0, 8.0, 20.0, 1),
    ]
    point = serving.combine(rounds)
    assert (point.requests, point.seconds, point.rps) == (400, 4.0, 100.0)  # total over total, not a mean of rates
    assert (point.p50_ms, point.p99_ms, point.max_ms, point.errors) == (2.0, 6.0, 20.0, 1)
    assert point.p99_rounds == [4.0, 8.0]  # every round's p99 is shown beside the median


def test_repeated_starts_are_judged_by_their_median_and_all_shown(serving: ModuleType) -> None:
    ours = run(serving, "deepgate serve", 0.8, 100, [("single", 1, 800, 2), ("single", 32, 1000, 8)])
    ours.startups, ours.restarts, ours.restart_s = [0.7, 0.8, 1.3], [0.6, 1.1, 1.2], 1.1
    ours.points[1].p99_rounds = [7.5, 8.0, 12.25]
    theirs = run(serving, "mlflow models serve", 9.0, 500, [("single", 1, 100, 5), ("single", 32, 200, 90)])
    runs = {"deepgate serve": ours, "mlflow models serve": theirs}
    shown = {target: (measured, met) for target, measured, met in serving.targets(runs, serving.ratios(runs), 32)}
    assert shown["ready within 1 s of start"] == ("0.80 s (median of 0.70 / 0.80 / 1.30 s)", True)
    restart = shown["ready within 1 s of a restart (champion cached)"]
    assert restart == ("1.10 s (median of 0.60 / 1.10 / 1.20 s)", False)
    assert shown["p99 < 10 ms at 32 connections"] == ("8.0 ms (median of 7.5 / 8.0 / 12.2 ms)", True)


def test_resident_memory_of_a_process_tree(serving: ModuleType) -> None:
    total, largest = serving.tree_rss_mb(os.getpid())
    assert total >= largest > 10  # this interpreter, with pytest loaded, holds more than 10 MB
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(100):  # until the child shows up with its memory
            worker, parent = serving.worker_and_parent_rss_mb(os.getpid())
            if worker != parent:
                break
            time.sleep(0.05)
        assert 0 < worker < parent  # the child: a bare interpreter, smaller than this one with pytest
        assert parent == pytest.approx(serving._rss_mb(os.getpid()), rel=0.05)
        assert serving.cpu_seconds(os.getpid()) > 0
    finally:
        child.kill()
        child.wait()
