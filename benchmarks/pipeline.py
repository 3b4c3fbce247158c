"""Where the time of a retraining run goes: model fitting versus everything around it.

Run (from the project root; `make bench` does the same)::

    python benchmarks/pipeline.py                       # every bundled pipeline, full configs
    python benchmarks/pipeline.py mnist --set train.max_epochs=2 --json bench.json

All in one process, in a fresh workspace: a temporary folder with a copy of params.yaml, its
own MLflow store, DVC remote and Prefect home, never the user's (like `deepgate run`, it uses a
local Prefect server on port 4200 if one runs). It first times the one-off costs (Prefect's
temporary server start-up, MLflow store creation), then prints for each pipeline:

1. the seconds of each stage (the flow's own timings), the flow's wall time measured around
   `retrain(...)`, the fitting (`train`) and `evaluate` stages, and the share of the run spent
   outside them: 1 - (train + evaluate) / wall (orchestration, tracking, validation, registry);
2. test accuracy, macro-F1 and the outcome;
3. a second run with nothing changed: its wall time and outcome (expected `up_to_date`).

Stage times include Prefect's task overhead and the MLflow logging done inside the stage
(`evaluate` also draws and logs the confusion matrix), so "outside" is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column, Table

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("pipeline", "outcome", "accuracy", "macro-F1", "wall s", "train s", "evaluate s")
COLUMNS += ("outside fit+eval", "rerun s", "rerun outcome")
TOTALS = {"stage_sum_s": "sum of stages", "outside_stages_s": "outside stages", "wall_s": "flow wall time"}
console = Console(width=None if sys.stdout.isatty() else 120)  # no wrapping when piped


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipelines", nargs="*", help="bundled pipelines (default: all in params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every pipeline")
    parser.add_argument("--keep", type=Path, help="use (and keep) this workspace instead of a temporary one")
    parser.add_argument("--json", type=lambda p: Path(p).resolve(), help="also write the figures to this JSON file")
    return parser.parse_args()


def prepare_workspace(keep: Path | None) -> Path:
    """A workspace holding params.yaml, isolated from the user's MLflow store and DVC remote."""
    home = (keep or Path(tempfile.mkdtemp(prefix="deepgate-bench-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "params.yaml").exists():
        shutil.copy(ROOT / "params.yaml", home / "params.yaml")
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DEEPGATE_ARTIFACT_ROOT", "DEEPGATE_DVC_REMOTE"):
        os.environ.pop(variable, None)
    os.environ["PREFECT_HOME"] = str(home / ".prefect")
    os.environ["DEEPGATE_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the tables, not per-epoch logs
    os.chdir(home)
    return home


def warm_up(settings: Any) -> dict[str, float]:
    """Time the one-off costs, so that the pipeline figures hold per-run costs only.

    The first of three empty flow runs also starts Prefect's temporary server; the later two
    cost only Prefect's per-run overhead. Creating the MLflow store (sqlite migrations) is paid once.
    """
    from prefect import flow

    from components.registry import Registry

    @flow(name="bench-noop")
    def noop() -> None:
        """Nothing: what is left is Prefect's own cost."""

    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        noop()
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    Registry(settings).client.search_experiments()
    per_run = (seconds[1] + seconds[2]) / 2
    return {
        "first_empty_flow_s": seconds[0],
        "empty_flow_s": per_run,
        "prefect_startup_s": seconds[0] - per_run,
        "mlflow_store_s": time.perf_counter() - start,
    }


def run_once(config: Any, home: Path) -> dict[str, Any]:
    """One `retrain` call, timed from outside, with the figures of its summary."""
    from flows.retrain import GateStopped, retrain

    start = time.perf_counter()
    try:
        summary = retrain(config, home=str(home))
    except GateStopped as stopped:
        summary = stopped.summary
    wall = time.perf_counter() - start
    console.print(f"{config.name}: {summary.outcome} in {wall:.1f}s", highlight=False)
    fit_eval = summary.timings.get("train", 0.0) + summary.timings.get("evaluate", 0.0)
    return {
        "outcome": summary.outcome,
        "wall_s": wall,
        "timings": dict(summary.timings),
        "stage_sum_s": sum(summary.timings.values()),
        "outside_stages_s": wall - sum(summary.timings.values()),
        "fit_eval_s": fit_eval,
        "share_outside_fit_eval": 1 - fit_eval / wall,
        "accuracy": summary.metrics.get("accuracy"),
        "macro_f1": summary.metrics.get("macro_f1"),
    }


def machine() -> dict[str, Any]:
    """Cores, torch threads and load: what the figures depend on."""
    import torch

    return {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "prefect_api": os.environ.get("PREFECT_API_URL", "temporary server"),
    }


def machine_line(host: dict[str, Any]) -> str:
    """:func:`machine`'s figures as the line the benchmarks print under their tables."""
    return (
        f"machine: {host['cpu_count']} cores, torch {host['torch']} with {host['torch_threads']} threads, "
        f"load average {host['load_average']} (at the end), {host['platform']}"
    )


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(results: dict[str, list[dict[str, Any]]], one_off: dict[str, float], host: dict[str, Any]) -> None:
    """Stage seconds per run, then one line per pipeline."""
    stages = Table("stage", *(Column(n, justify="right") for n in results), title="seconds per stage (run 1 / run 2)")
    stage_names = dict.fromkeys(k for runs in results.values() for r in runs for k in r["timings"])
    for key in [*stage_names, *TOTALS]:
        cells = [" / ".join(_f(r["timings"].get(key, r.get(key)), 2) for r in runs) for runs in results.values()]
        stages.add_row(TOTALS.get(key, key), *cells, style="bold" if key == "wall_s" else None)
    console.print(stages)

    summary = Table(title="deepgate pipeline benchmark")
    for column in COLUMNS:
        summary.add_column(column, justify="left" if column in ("pipeline", "outcome", "rerun outcome") else "right")
    for name, (first, second) in results.items():
        cells = [first["outcome"], _f(first["accuracy"], 4), _f(first["macro_f1"], 4), _f(first["wall_s"])]
        cells += [_f(first["timings"].get(stage)) for stage in ("train", "evaluate")]
        summary.add_row(name, *cells, f"{first['share_outside_fit_eval']:.0%}", _f(second["wall_s"]), second["outcome"])
    console.print(summary)
    console.print(
        f"one-off costs, not in the figures above: Prefect ({host['prefect_api']}) first empty flow "
        f"{one_off['first_empty_flow_s']:.1f}s vs {one_off['empty_flow_s']:.2f}s for later ones -> start-up "
        f"~{one_off['prefect_startup_s']:.1f}s; MLflow import and store creation {one_off['mlflow_store_s']:.1f}s. "
        "Run 1 of the first pipeline still pays first imports (GX, Lightning).\n" + machine_line(host),
        highlight=False,
    )


def main() -> None:
    """Run every chosen pipeline twice in one workspace and print where the time went."""
    args = parse_args()
    home = prepare_workspace(args.keep)
    from components.config import bundled_pipelines, load_pipeline
    from components.settings import load_settings
    from flows.cli import _prepare_environment

    settings = load_settings(home)
    _prepare_environment(settings)  # before prefect is imported: its home, time-outs, analytics off
    names = args.pipelines or sorted(bundled_pipelines(settings.params_path))
    configs = {n: load_pipeline(n, params_path=settings.params_path, overrides=args.overrides) for n in names}
    console.print(f"workspace: {home}" + (" (kept)" if args.keep else " (temporary)"), highlight=False)
    one_off = warm_up(settings)
    results = {name: [run_once(config, home) for _ in (1, 2)] for name, config in configs.items()}
    host = machine()
    print_tables(results, one_off, host)
    if args.json:
        figures = {"machine": host, "one_off": one_off, "overrides": args.overrides, "pipelines": results}
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
