"""Transfer versus scratch with few labels: the acceptance figures of the transfer showcase.

Run (from the project root)::

    python benchmarks/transfer.py                                 # 10 and 50 labels/class, seeds 0 1 2
    python benchmarks/transfer.py --shots 10 --seeds 0 1 2 3 4 --json transfer.json
    python benchmarks/transfer.py --set train.unfreeze_after=20   # try a mnist-transfer setting

Everything runs in one process in a throw-away workspace (benchmarks/pipeline.py's: its own
params.yaml copy, MLflow store, DVC remote and Prefect home; the user's are never touched).

1. `mnist-base` (digits 0-4) runs once through the real flow, `retrain`, with every gate, and is
   registered and promoted to `champion`.
2. For each number of labels per class (`--shots`) and each seed (`--seeds`), `mnist-transfer`
   (digits 5-9) is trained twice on the same labelled rows and scored on the same test rows:
   as configured (`train.init: transfer`) and with `train.init=scratch`, nothing else changed.
   The seed sets `split.seed` (which rows are held out and which labelled rows `limit_shots`
   keeps) and `train.seed` (initial head or network weights, batch order, dropout).

Step 2 calls the flow's own steps without Prefect, which saves the gates, the registration and
Prefect's overhead on every row and changes no figure: the `split` task's function
(stratified split, then `limit_shots`), the `load_base_model` task's function (which loads
`models:/deepgate-mnist-base@champion` from the registry with `Registry.load_predictor`),
`modeling.fit_candidate` (what the `train` task calls) and `modeling.score` on the test rows
(what `evaluate` reports). Each row's accuracy is therefore the test accuracy of::

    deepgate run mnist-transfer --set data.shots_per_class=N --set split.seed=S --set train.seed=S \
        [--set train.init=scratch]

run after `deepgate run mnist-base`. The figures are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import machine, machine_line, prepare_workspace  # noqa: E402

INITS = ("transfer", "scratch")
console = Console(width=None if sys.stdout.isatty() else 120)  # no wrapping when piped


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[10, 50], help="labels per class (default: 10 50)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split and training seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for mnist-transfer")
    parser.add_argument(
        "--base-set", dest="base_overrides", action="append", default=[], help="KEY=VALUE for mnist-base"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--keep", type=Path, help="use (and keep) this workspace; a kept base is not retrained")
    parser.add_argument("--json", type=lambda p: Path(p).resolve(), help="also write the figures to this JSON file")
    return parser.parse_args()


def train_base(config: Any, home: Path, registry: Any, reference: str) -> dict[str, Any]:
    """Run `mnist-base` through the flow; it must end as the registered champion.

    The test accuracy is that of the model `reference` names (the champion), on its own test
    rows, so that a kept workspace whose base is up to date reports it too.
    """
    from components import modeling
    from components.dataset import load_source
    from flows.retrain import retrain, split

    start = time.perf_counter()
    summary = retrain(config, home=str(home))
    if summary.outcome not in ("promoted", "up_to_date"):
        raise SystemExit(f"{config.name} was not promoted ({summary.outcome}): no base to transfer from")
    seconds = time.perf_counter() - start
    base, version = registry.load_predictor(reference)
    dataset = load_source(config.data)
    accuracy = modeling.score(base, dataset, split.fn(dataset, config).test).accuracy
    console.print(
        f"base {config.name}: {summary.outcome} in {seconds:.0f}s; {version} test accuracy {accuracy:.4f}",
        highlight=False,
    )
    return {"outcome": summary.outcome, "model": version, "accuracy": accuracy, "seconds": seconds}


def fit_and_score(config: Any, registry: Any) -> dict[str, Any]:
    """Split, load the base (transfer only), fit and score one `mnist-transfer` configuration."""
    from components import modeling
    from components.dataset import load_source
    from flows.retrain import base_model, split

    dataset = load_source(config.data)
    indices = split.fn(dataset, config)
    base, reference = base_model.fn(registry, config, None)
    candidate = modeling.fit_candidate(config, dataset, indices, base=base)
    report = modeling.score(candidate.predictor, dataset, indices.test)
    result = candidate.result
    return {
        "accuracy": report.accuracy,
        "macro_f1": report.macro_f1,
        "base_model": reference,
        "train_rows": len(indices.train),
        "test_rows": len(indices.test),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": result.fit_seconds,
    }


def run_pair(shots: int, seed: int, overrides: list[str], settings: Any, registry: Any) -> dict[str, Any]:
    """Transfer and scratch on the same labelled and test rows."""
    from components.config import load_pipeline

    common = [*overrides, f"data.shots_per_class={shots}", f"split.seed={seed}", f"train.seed={seed}"]
    row: dict[str, Any] = {"shots": shots, "seed": seed}
    for init in INITS:
        extra = [] if init == "transfer" else ["train.init=scratch"]
        config = load_pipeline("mnist-transfer", params_path=settings.params_path, overrides=common + extra)
        if init == "transfer" and config.train.init != "transfer":
            raise SystemExit("mnist-transfer is not configured with train.init: transfer")
        row[init] = fit_and_score(config, registry)
        done = row[init]
        console.print(
            f"  shots {shots:>3} seed {seed} {init:<8}: accuracy {done['accuracy']:.4f} "
            f"({done['train_rows']} labelled rows, {done['epochs']} epochs, best {done['best_epoch'] + 1}, "
            f"{done['seconds']:.1f}s)",
            highlight=False,
        )
    row["difference"] = row["transfer"]["accuracy"] - row["scratch"]["accuracy"]
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of each accuracy and of the difference, per shots."""

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    out = []
    for shots in dict.fromkeys(r["shots"] for r in rows):
        mine = [r for r in rows if r["shots"] == shots]
        differences = [r["difference"] for r in mine]
        out.append(
            {
                "shots": shots,
                "seeds": len(mine),
                "transfer": spread([r["transfer"]["accuracy"] for r in mine]),
                "scratch": spread([r["scratch"]["accuracy"] for r in mine]),
                "difference": spread(differences),
                "min_difference": min(differences),
                "transfer_wins": sum(d > 0 for d in differences),
            }
        )
    return out


def print_tables(rows: list[dict[str, Any]], summary: list[dict[str, Any]], host: dict[str, Any]) -> None:
    """One line per shots and seed, then the mean and standard deviation per shots."""
    table = Table(title="mnist-transfer: test accuracy, transfer vs scratch (same labelled and test rows)")
    for column in ("labels/class", "seed", "transfer", "scratch", "difference"):
        table.add_column(column, justify="right")
    for r in rows:
        cells = (f"{r['transfer']['accuracy']:.4f}", f"{r['scratch']['accuracy']:.4f}", f"{r['difference']:+.4f}")
        table.add_row(str(r["shots"]), str(r["seed"]), *cells)
    console.print(table)

    means = Table(title="mean ± sd over seeds")
    for column in ("labels/class", "seeds", "transfer", "scratch", "difference", "smallest difference", "wins"):
        means.add_column(column, justify="right")
    for s in summary:

        def pm(key: str, figures: dict[str, Any] = s) -> str:
            return f"{figures[key]['mean']:.4f} ± {figures[key]['sd']:.4f}"

        wins = f"{s['transfer_wins']}/{s['seeds']}"
        means.add_row(
            str(s["shots"]),
            str(s["seeds"]),
            pm("transfer"),
            pm("scratch"),
            pm("difference"),
            f"{s['min_difference']:+.4f}",
            wins,
        )
    console.print(means)
    console.print(machine_line(host), highlight=False)


def main() -> None:
    """Train the base once, then transfer and scratch for every shots and seed."""
    args = parse_args()
    home = prepare_workspace(args.keep)
    import shutil

    import torch

    from components.config import load_pipeline
    from components.registry import Registry
    from components.settings import load_settings
    from flows.cli import _prepare_environment

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = load_settings(home)
    _prepare_environment(settings)  # before prefect is imported: its home, time-outs, analytics off
    console.print(f"workspace: {home}" + (" (kept)" if args.keep else " (temporary)"), highlight=False)
    base_config = load_pipeline("mnist-base", params_path=settings.params_path, overrides=args.base_overrides)
    reference = load_pipeline("mnist-transfer", params_path=settings.params_path, overrides=args.overrides)
    registry = Registry(settings)
    base = train_base(base_config, home, registry, str(reference.train.base_model))
    rows = []
    for shots in args.shots:
        for seed in args.seeds:
            rows.append(run_pair(shots, seed, args.overrides, settings, registry))
    summary = summarise(rows)
    host = machine()
    print_tables(rows, summary, host)
    if args.json:
        figures = {
            "machine": host,
            "overrides": args.overrides,
            "base_overrides": args.base_overrides,
            "base": base,
            "rows": rows,
            "summary": summary,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
