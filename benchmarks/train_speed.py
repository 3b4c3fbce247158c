"""Overhead of the project's training (train_model) against a hand-written PyTorch loop, on CPU.

Run (from the project root; a checkout that is not installed needs `PYTHONPATH=.`)::

    python benchmarks/train_speed.py                          # arrests and mnist, 5 rounds x 3 epochs
    python benchmarks/train_speed.py arrests --rounds 6 --epochs 4 --threads 1 --variants --profile

Workloads are built as the flow builds them: the pipeline's `params.yaml` section, its source
and split, the preprocessor fitted on the training rows, the network seeded and built from the
`train:` settings (arrests: MLP [64, 32], batch 128, balanced class weights; mnist: CNN
[32, 64], dropout 0.25, 3,500 train / 500 val images, batch 64). Both sides get the same
initial weights, rows, batches, AdamW settings, LambdaLR schedule
(:func:`components.schedules.build_scheduler`), seeds and deterministic-kernel flag; the
early-stopping patience is set above the epoch count so that every run trains every epoch.

- **L** is :func:`components.training.train_model` as the flow calls it.
- **P** is :func:`plain_fit`: the same work per epoch without Lightning. A training pass over
  batches cut by a seeded permutation (as train_model cuts them), the epoch-wise scheduler
  step, a validation pass under `torch.inference_mode` computing the row-weighted val loss
  and accuracy, early-stopping bookkeeping and a CPU copy of the best weights, all under
  `torch.use_deterministic_algorithms(True)`. Matching histories and weights ("bit-identical")
  show that both did the same arithmetic. (It also takes a device and an autocast dtype:
  `gpu_train.py` runs it on a GPU.)

They run alternately in one process (L, P, L, P, ...), after one untimed warm-up epoch each.
An epoch's time runs from one epoch's end to the next (both report each epoch at the same
point, after validation), so the steady epoch leaves out the one-off set-up, which is shown
apart as the fixed cost per call. `--threads` sets torch's threads for both sides: on a small
machine shared with other work, 1 thread gives far steadier figures than 2 busy ones.

`--variants` times, in the same alternation, what train_model adds to the plain loop (its
per-step gradient-norm guard) and ``pl.Trainer.fit`` of the same ClassifierModule with the
settings train_model used with the Trainer, alone and with cheap changes (`inference_mode`,
`log_every_n_steps`, `self.log` once per epoch). `--profile` runs cProfile on one fit of
each kind and sums the own time by area (Lightning, the training module, torch.optim, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import json
import logging
import math
import os
import pstats
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from components.config import TrainConfig, load_pipeline
from components.dataset import feature_columns, load_source
from components.features import fit_preprocessor
from components.modeling import class_labels, encode_labels, model_inputs
from components.models import build_model
from components.schedules import build_scheduler
from components.split import split_dataset
from components.training import ClassifierModule, balanced_class_weights, train_model

TARGET_RATIO = 1.15
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
console = Console(width=None if sys.stdout.isatty() else 130)
Split = tuple[np.ndarray, np.ndarray]
EpochHook = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------------------------
# Workloads, as the flow builds them
# --------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """One pipeline's encoded data, network recipe and training settings."""

    name: str
    arch: str
    params: dict[str, Any]
    train: Split
    val: Split
    cfg: TrainConfig

    def net(self) -> nn.Module:
        """The network with the pipeline's seeded initial weights (as fit_candidate seeds them)."""
        torch.manual_seed(self.cfg.seed)
        return build_model(self.arch, **self.params)

    def config(self, epochs: int) -> TrainConfig:
        """The pipeline's settings on CPU, for exactly `epochs` epochs (no early stop)."""
        return self.cfg.model_copy(update={"max_epochs": epochs, "patience": epochs + 1, "accelerator": "cpu"})


def load_workload(name: str) -> Workload:
    """Data, split, preprocessing and network parameters of a bundled pipeline."""
    config = load_pipeline(name, params_path=ROOT / "params.yaml")
    dataset = load_source(config.data, base_dir=ROOT)
    split = split_dataset(dataset, config.data, config.split)
    classes = class_labels(dataset)
    if dataset.modality == "tabular":
        frame = dataset.table.iloc[split.train]
        preprocessor = fit_preprocessor("tabular", frame=frame, columns=feature_columns(config.data, dataset.table))
    else:
        preprocessor = fit_preprocessor("image", images=dataset.images[split.train])  # type: ignore[index]

    def encode(rows: np.ndarray) -> Split:
        inputs = preprocessor.transform(model_inputs(dataset, rows), strict=False)
        return inputs, encode_labels(dataset, classes, rows)

    train, val = encode(split.train), encode(split.val)
    cfg = config.train
    if cfg.arch == "mlp":
        params: dict[str, Any] = {"in_features": train[0].shape[1], "hidden": list(cfg.hidden)}
    else:
        channels, height, width = train[0].shape[1:]
        params = {"in_channels": channels, "height": height, "width": width, "channels": list(cfg.channels)}
    params |= {"n_classes": len(classes), "dropout": cfg.dropout}
    return Workload(name, cfg.arch, params, train, val, cfg)


# --------------------------------------------------------------------------------------------
# The hand-written loop
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """torch's flags as train_model sets them for a CPU fit, restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _tensors(data: Split) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = data
    return torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)), torch.from_numpy(labels)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision as Fabric's `bf16-mixed` applies it; nothing when `amp_dtype` is None."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()


def _validate(
    net: nn.Module,
    val: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    weights: torch.Tensor | None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    inputs, labels = val
    loss_sum, correct = 0.0, 0
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            batch, truth = inputs[start : start + batch_size], labels[start : start + batch_size]
            with _autocast(inputs.device, amp_dtype):
                logits = net(batch)
                loss = F.cross_entropy(logits, truth, weight=weights)
            loss_sum += float(loss) * len(truth)
            correct += int((logits.argmax(dim=1) == truth).sum())
    return loss_sum / len(labels), correct / len(labels)


def _check_norm(net: nn.Module, clip: bool, limit: float) -> None:
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(net.parameters(), math.inf) if clip else nn.utils.get_total_norm(grads)
    if not float(norm) <= limit:
        raise FloatingPointError(f"gradient norm {float(norm):.2g}")


def plain_fit(
    net: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    on_epoch_end: EpochHook,
    grad_norm: Literal["none", "clip", "measure"] = "none",
    device: torch.device = CPU,
    amp_dtype: torch.dtype | None = None,
) -> list[dict]:
    """train_model's work in plain PyTorch: same seeding, batches, loss, optimizer and schedule.

    Batches are cut from the in-memory tensors by a seeded permutation per epoch, as
    train_model cuts them, so that both fits see the same rows in the same order; like
    train_model, the data are moved to `device` once, before the first epoch.

    Args:
        net: The network, trained in place.
        train: Training inputs and labels.
        val: Validation inputs and labels.
        cfg: The settings (seed, batch size, optimizer, schedule, epochs, patience).
        on_epoch_end: Called with each epoch's record.
        grad_norm: Also read the gradient norm each step, as train_model's divergence guard
            does: `clip` by ``clip_grad_norm_(max_norm=inf)`` (a norm and a multiply by 1),
            `measure` by ``get_total_norm`` alone; `none` (the default) skips it.
        device: Where to train; deterministic kernels on CPU only, as train_model (some CUDA
            kernels, max-pool backward, have no deterministic variant).
        amp_dtype: Run forward passes and the loss under ``torch.autocast`` with this dtype
            (``torch.bfloat16`` for `bf16-mixed`); None trains in float32.

    Returns:
        One history record per epoch, in train_model's format; `net` ends on CPU with its
        best weights.
    """
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # what seed_everything does for torch's generator (dropout)
    weights = None
    if cfg.class_weight == "balanced":
        with torch.no_grad():
            n_classes = net.eval()(torch.as_tensor(train[0][:1])).shape[-1]
        weights = balanced_class_weights(train[1], n_classes).to(device)
    net.to(device)
    inputs, labels = (tensor.to(device) for tensor in _tensors(train))
    val_tensors = tuple(tensor.to(device) for tensor in _tensors(val))
    order = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.max_epochs)
    history: list[dict] = []
    best_loss, best_state, waited = float("inf"), None, 0
    with _deterministic() if device.type == "cpu" else contextlib.nullcontext():
        for epoch in range(cfg.max_epochs):
            lr = float(optimizer.param_groups[0]["lr"])
            net.train()
            loss_sum, rows = 0.0, 0
            for index in torch.randperm(len(labels), generator=order).split(cfg.batch_size):
                with _autocast(device, amp_dtype):
                    loss = F.cross_entropy(net(inputs[index]), labels[index], weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_norm != "none":
                    _check_norm(net, grad_norm == "clip", cfg.max_grad_norm)
                optimizer.step()
                loss_sum, rows = loss_sum + float(loss.detach()) * len(index), rows + len(index)
            scheduler.step()
            val_loss, val_accuracy = _validate(net, val_tensors, cfg.batch_size, weights, amp_dtype)
            if val_loss < best_loss:
                best_loss, waited = val_loss, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            else:
                waited += 1
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / rows,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": lr,
            }
            history.append(record)
            on_epoch_end(record)
            if waited >= cfg.patience and epoch + 1 >= cfg.min_epochs:
                break
    net.to("cpu")
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed fit: wall time of the call and the time at the end of each epoch."""

    total: float
    epoch_ends: list[float]
    history: list[dict]
    state: dict[str, torch.Tensor] = field(repr=False)

    @property
    def epochs(self) -> list[float]:
        """Steady epoch times: from one epoch's end to the next (the first epoch is left out)."""
        return [b - a for a, b in itertools.pairwise(self.epoch_ends)]

    @property
    def fixed(self) -> float:
        """Call time beyond its epochs: set-up and tear-down (Trainer construction, hooks)."""
        steady = statistics.median(self.epochs) if self.epochs else 0.0
        return self.total - steady * len(self.epoch_ends)


Fitter = Callable[[nn.Module, Split, Split, TrainConfig, EpochHook], list[dict]]


def lightning_fit(net: nn.Module, train: Split, val: Split, cfg: TrainConfig, on_epoch_end: EpochHook) -> list[dict]:
    """train_model exactly as the flow calls it."""
    return train_model(net, train, val, cfg, on_epoch_end=on_epoch_end).history


def timed(fitter: Fitter, work: Workload, epochs: int) -> Run:
    """Fit a fresh, identically seeded network and time the call and each epoch end."""
    net, cfg = work.net(), work.config(epochs)
    ends: list[float] = []
    start = time.perf_counter()
    history = fitter(net, work.train, work.val, cfg, lambda _: ends.append(time.perf_counter()))
    total = time.perf_counter() - start
    return Run(total, [t - start for t in ends], history, {k: v.clone() for k, v in net.state_dict().items()})


def alternate(fitters: dict[str, Fitter], work: Workload, rounds: int, epochs: int) -> dict[str, list[Run]]:
    """Run each fitter once per round, in turn, after one untimed warm-up epoch each."""
    for fitter in fitters.values():
        timed(fitter, work, 1)
    runs: dict[str, list[Run]] = {name: [] for name in fitters}
    for _ in range(rounds):
        for name, fitter in fitters.items():
            runs[name].append(timed(fitter, work, epochs))
    return runs


def epoch_median(runs: list[Run]) -> float:
    """Median steady epoch over all runs."""
    return statistics.median(t for run in runs for t in run.epochs)


def history_gap(a: Run, b: Run) -> float:
    """Largest absolute difference between two histories' losses, accuracy and lr."""
    keys = ("train_loss", "val_loss", "val_accuracy", "lr")
    return max(abs(x[k] - y[k]) for x, y in zip(a.history, b.history, strict=True) for k in keys)


def weights_equal(a: Run, b: Run) -> bool:
    """Whether two fits ended with bit-identical weights."""
    return all(torch.equal(a.state[k], b.state[k]) for k in a.state)


# --------------------------------------------------------------------------------------------
# Trainer.fit reference and its cheap variants
# --------------------------------------------------------------------------------------------


class _History(Callback):
    """Per-epoch history and best weights, kept as train_model kept them when it ran Trainer.fit."""

    def __init__(self, on_epoch_end: EpochHook) -> None:
        self.on_epoch_end = on_epoch_end
        self.history: list[dict] = []
        self.best_loss, self.lr = math.inf, 0.0
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lr = float(trainer.optimizers[0].param_groups[0]["lr"])  # before the epoch-end step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = float(trainer.callback_metrics["val_loss"])
        if loss < self.best_loss:
            self.best_loss = loss
            state = pl_module.net.state_dict()  # type: ignore[union-attr]
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics  # complete here: validation ran before this hook
        keys = ("train_loss", "val_loss", "val_accuracy")
        record = {"epoch": trainer.current_epoch, **{k: float(metrics[k]) for k in keys}, "lr": self.lr}
        self.history.append(record)
        self.on_epoch_end(record)


def trainer_fit(
    net: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    on_epoch_end: EpochHook,
    module_class: type[ClassifierModule] = ClassifierModule,
    **overrides: Any,
) -> list[dict]:
    """ClassifierModule under ``pl.Trainer.fit`` with the settings train_model used with the Trainer.

    DataLoaders over TensorDatasets, EarlyStopping, no logger, checkpointing, summary, progress
    bar or sanity validation; `overrides` replace Trainer arguments.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    weights = None
    if cfg.class_weight == "balanced":
        with torch.no_grad():
            weights = balanced_class_weights(train[1], net.eval()(torch.as_tensor(train[0][:1])).shape[-1])
    module = module_class(net, cfg.lr, cfg.weight_decay, cfg.schedule, cfg.max_epochs, weights)
    recorder = _History(on_epoch_end)
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "deterministic": True,
        "max_epochs": cfg.max_epochs,
        "min_epochs": min(cfg.min_epochs, cfg.max_epochs),
        "callbacks": [EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience), recorder],
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
    }
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(TensorDataset(*_tensors(train)), cfg.batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(TensorDataset(*_tensors(val)), cfg.batch_size)
    with _deterministic(), _quiet_lightning():
        pl.Trainer(**(settings | overrides)).fit(module, train_loader, val_loader)
    if recorder.best_state is not None:
        net.load_state_dict(recorder.best_state)
    net.eval()
    return recorder.history


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the num_workers hint, torch deprecations
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


class EpochLoggedModule(ClassifierModule):
    """ClassifierModule summing its metrics in plain tensors and calling `self.log` once per epoch."""

    def on_train_epoch_start(self) -> None:
        """Reset the sums (each epoch begins with its training pass)."""
        self._sums = {key: torch.zeros((), device=self.device) for key in ("train", "val", "correct")}
        self._rows = {"train": 0, "val": 0}

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, labels, weight=self.class_weights)
        self._sums[stage] += loss.detach() * len(labels)
        self._rows[stage] += len(labels)
        if stage == "val":
            self._sums["correct"] += (logits.argmax(dim=1) == labels).sum()
        return loss

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's means once; the training sums are complete, validation runs last."""
        sums, rows = self._sums, self._rows
        self.log("train_loss", sums["train"] / rows["train"])
        self.log("val_loss", sums["val"] / rows["val"])
        self.log("val_accuracy", sums["correct"].float() / rows["val"])


VARIANTS: dict[str, Fitter] = {
    "plain loop + grad-norm guard, clip_grad_norm_(inf) (train_model before)": partial(plain_fit, grad_norm="clip"),
    "plain loop + grad-norm guard, get_total_norm only": partial(plain_fit, grad_norm="measure"),
    "Trainer.fit as train_model had it": trainer_fit,
    "  inference_mode=False": partial(trainer_fit, inference_mode=False),
    "  log_every_n_steps=0": partial(trainer_fit, log_every_n_steps=0),
    "  self.log once per epoch": partial(trainer_fit, module_class=EpochLoggedModule),
    "  self.log once per epoch, log_every_n_steps=0, inference_mode=False": partial(
        trainer_fit, module_class=EpochLoggedModule, log_every_n_steps=0, inference_mode=False
    ),
}


# --------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------

BUCKETS = (
    ("lightning (Fabric/Trainer wrappers, hooks, logging)", ("lightning/", "lightning_utilities/", "torchmetrics/")),
    ("components.training (loop, guard, checkpoints)", ("components/training.py",)),
    ("torch.optim (AdamW, LambdaLR)", ("torch/optim/",)),
    ("torch.utils.data (DataLoader)", ("torch/utils/data/",)),
    ("torch.nn (modules, functional, clip_grad)", ("torch/nn/",)),
    ("other torch python (autograd, dynamo guards)", ("torch/",)),
)


def _bucket(filename: str) -> str:
    if filename.startswith(("~", "<")):
        return "C calls (tensor kernels, backward)"
    for name, needles in BUCKETS:
        if any(needle in filename for needle in needles):
            return name
    return "other python"


def profile_buckets(fitter: Fitter, work: Workload, epochs: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """cProfile one fit: own time per area, and the Lightning/training functions with most own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    timed(fitter, work, epochs)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    buckets: dict[str, float] = {}
    functions: list[tuple[str, float]] = []
    for (filename, line, name), (_, _, own, _, _) in stats.items():
        bucket = _bucket(filename)
        buckets[bucket] = buckets.get(bucket, 0.0) + own
        if bucket.startswith(("lightning", "components")):
            functions.append((f"{filename.split('site-packages/')[-1].split('/main/')[-1]}:{line}({name})", own))
    functions.sort(key=lambda item: -item[1])
    return buckets, functions[:12]


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _steps(work: Workload) -> tuple[int, int]:
    batch = work.cfg.batch_size
    return -(-len(work.train[1]) // batch), -(-len(work.val[1]) // batch)


def compare(work: Workload, rounds: int, epochs: int) -> dict[str, Any]:
    """Alternate L and P; per-epoch medians, their ratio, fixed costs and the equivalence check."""
    runs = alternate({"L": lightning_fit, "P": plain_fit}, work, rounds, epochs)
    lightning, plain = epoch_median(runs["L"]), epoch_median(runs["P"])
    train_steps, val_steps = _steps(work)
    return {
        "pipeline": work.name,
        "steps": f"{train_steps} + {val_steps}",
        "L_epoch_s": lightning,
        "P_epoch_s": plain,
        "ratio": lightning / plain,
        "extra_ms_per_step": 1000 * (lightning - plain) / (train_steps + val_steps),
        "L_fixed_s": statistics.median(r.fixed for r in runs["L"]),
        "P_fixed_s": statistics.median(r.fixed for r in runs["P"]),
        "call_ratio": statistics.median(r.total for r in runs["L"]) / statistics.median(r.total for r in runs["P"]),
        "history_gap": max(history_gap(a, b) for a, b in zip(runs["L"], runs["P"], strict=True)),
        "same_weights": all(weights_equal(a, b) for a, b in zip(runs["L"], runs["P"], strict=True)),
        "L_epochs": [round(t, 4) for r in runs["L"] for t in r.epochs],
        "P_epochs": [round(t, 4) for r in runs["P"] for t in r.epochs],
    }


def print_comparison(rows: list[dict[str, Any]], rounds: int, epochs: int) -> None:
    """The L vs P table."""
    table = Table(title=f"train_model (L) vs plain loop (P), CPU, {rounds} rounds x {epochs} epochs, alternating")
    columns = ("pipeline", "steps/epoch", "L epoch s", "P epoch s", "L / P", "extra ms/step", "L / P call")
    for column in (*columns, "fixed s L|P", "same result"):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for row in rows:
        verdict = "ok" if row["ratio"] <= TARGET_RATIO else f"> {TARGET_RATIO}"
        same = "bit-identical" if row["same_weights"] else f"gap {row['history_gap']:.1e}"
        table.add_row(
            row["pipeline"],
            row["steps"],
            f"{row['L_epoch_s']:.3f}",
            f"{row['P_epoch_s']:.3f}",
            f"{row['ratio']:.2f} {verdict}",
            f"{row['extra_ms_per_step']:.2f}",
            f"{row['call_ratio']:.2f}",
            f"{row['L_fixed_s']:.2f}|{row['P_fixed_s']:.2f}",
            same,
        )
    console.print(table)
    console.print(
        "epoch s: median steady epoch (epoch end to epoch end); extra ms/step: (L - P) per train + val step; "
        "L / P call: whole calls (set-up included); fixed s: call time beyond its epochs."
    )


def run_variants(work: Workload, rounds: int, epochs: int) -> list[dict[str, Any]]:
    """train_model, the plain loop and the Trainer.fit variants, alternated: epoch medians."""
    fitters: dict[str, Fitter] = {"train_model as is": lightning_fit, "plain loop": plain_fit} | VARIANTS
    runs = alternate(fitters, work, rounds, epochs)
    plain, trainer = epoch_median(runs["plain loop"]), epoch_median(runs["Trainer.fit as train_model had it"])
    return [
        {
            "pipeline": work.name,
            "fit": name,
            "epoch_s": epoch_median(group),
            "vs_plain": epoch_median(group) / plain,
            "vs_trainer": epoch_median(group) / trainer - 1,
        }
        for name, group in runs.items()
    ]


def print_variants(rows: list[dict[str, Any]]) -> None:
    """The variants table."""
    table = Table(title="What train_model adds, and Trainer.fit with cheap changes; all alternated")
    for column in ("pipeline", "fit", "epoch s", "vs plain loop", "vs Trainer.fit"):
        table.add_column(column, justify="left" if column in ("pipeline", "fit") else "right")
    for row in rows:
        table.add_row(
            row["pipeline"], row["fit"], f"{row['epoch_s']:.3f}", f"{row['vs_plain']:.2f}x", f"{row['vs_trainer']:+.1%}"
        )
    console.print(table)


def print_profile(work: Workload, epochs: int) -> dict[str, Any]:
    """cProfile areas of train_model, Trainer.fit and the plain loop; the costliest Lightning functions."""
    fitters = {"L": lightning_fit, "Trainer.fit": trainer_fit, "P": plain_fit}
    profiles = {name: profile_buckets(fitter, work, epochs) for name, fitter in fitters.items()}
    areas = {name: buckets for name, (buckets, _) in profiles.items()}
    table = Table(title=f"{work.name}: cProfile own time by area (s), one fit of {epochs} epochs (profiler-inflated)")
    for column in ("area", *fitters, "L - P"):
        table.add_column(column, justify="left" if column == "area" else "right")
    names = sorted(set().union(*areas.values()), key=lambda n: -(areas["L"].get(n, 0.0) - areas["P"].get(n, 0.0)))
    for name in names:
        values = [areas[f].get(name, 0.0) for f in fitters]
        table.add_row(name, *(f"{v:.3f}" for v in values), f"{values[0] - values[-1]:+.3f}")
    table.add_row("total", *(f"{sum(areas[f].values()):.3f}" for f in fitters), "")
    console.print(table)
    for name in ("L", "Trainer.fit"):
        functions = Table(title=f"{work.name}, {name}: Lightning / training functions with the most own time")
        functions.add_column("function")
        functions.add_column("own s", justify="right")
        for function, own in profiles[name][1]:
            functions.add_row(function, f"{own:.3f}")
        console.print(functions)
    return {name: {"areas": buckets, "top_functions": top} for name, (buckets, top) in profiles.items()}


def machine_note() -> str:
    """Cores, torch threads, load average and versions."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"lightning {pl.__version__}, load average (1, 5, 15 min) {load}"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the comparisons and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pipelines", nargs="*", default=["arrests", "mnist"], help="bundled pipelines to run")
    parser.add_argument("--rounds", type=int, default=5, help="L/P alternations (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile one fit of each kind")
    parser.add_argument("--variants", action="store_true", help="also time Trainer.fit and cheap changes to it")
    parser.add_argument("--threads", type=int, help="torch threads for both sides (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console.print(machine_note())
    workloads = [load_workload(name) for name in args.pipelines]
    report: dict[str, Any] = {"machine": machine_note(), "comparison": [], "variants": [], "profile": {}}
    for work in workloads:
        report["comparison"].append(compare(work, args.rounds, args.epochs))
    print_comparison(report["comparison"], args.rounds, args.epochs)
    if args.variants:
        for work in workloads:
            report["variants"] += run_variants(work, args.rounds, args.epochs)
        print_variants(report["variants"])
    if args.profile:
        for work in workloads:
            report["profile"][work.name] = print_profile(work, args.epochs)
    console.print(machine_note().replace("machine:", "machine at the end:"))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
