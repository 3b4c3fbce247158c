"""Fit a classifier network with PyTorch Lightning, in memory, deterministically on CPU.

The network is a plain `nn.Module` (see :mod:`components.models`); :class:`ClassifierModule`
wraps it with the loss, the metrics and the optimizer. :func:`train_model` runs the fit with
early stopping and returns the network holding its best-validation-loss weights. Nothing is
written to disk: the best weights are kept in memory and progress goes to a callback.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from components.config import ScheduleConfig, TrainConfig
from components.schedules import build_scheduler

EpochCallback = Callable[[dict[str, Any]], None]


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of any classifier network.

    Args:
        net: The network; maps a batch of inputs to class logits.
        lr: Base learning rate of AdamW.
        weight_decay: AdamW weight decay.
        schedule: Learning-rate schedule, stepped once per epoch.
        max_epochs: Training length, which sets the default cosine period.
        class_weights: Per-class loss weights (None: every row counts the same).
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float,
        weight_decay: float,
        schedule: ScheduleConfig,
        max_epochs: int,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.max_epochs = max_epochs
        # A buffer moves to the training device with the module.
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.class_weights: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, labels, weight=self.class_weights)
        # batch_size makes the epoch value a per-row mean even when the last batch is short.
        size = len(labels)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=size)
        if stage == "val":
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
            self.log("val_accuracy", accuracy, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one training batch."""
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss and accuracy of one validation batch."""
        return self._step(batch, "val")

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """AdamW over the trainable parameters, with the epoch-wise schedule."""
        # Frozen layers (transfer learning) are left out so that weight decay cannot move them.
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = build_scheduler(optimizer, self.schedule, self.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    Attributes:
        model: The network with its best-validation-loss weights, in eval mode, on CPU.
        history: One dict per epoch: epoch (0-based), train_loss, val_loss, val_accuracy, lr.
        best_epoch: The epoch (0-based) whose weights `model` holds.
        epochs_run: Epochs actually trained.
        stopped_early: Whether early stopping ended the fit before `max_epochs`.
        device: Where the fit ran, e.g. `cpu` or `cuda:0`.
        fit_seconds: Wall time of the fit.
    """

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    device: str
    fit_seconds: float


class _Recorder(Callback):
    """Keeps the per-epoch history and a CPU copy of the best weights; reports each epoch."""

    def __init__(self, on_epoch_end: EpochCallback | None = None) -> None:
        self.on_epoch_end = on_epoch_end
        self.history: list[dict[str, Any]] = []
        self.best_loss = float("inf")
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.device = "cpu"
        self._epoch_lr = float("nan")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.device = str(pl_module.device)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Read now: Lightning steps epoch schedulers right after the last training batch,
        # before validation and before on_train_epoch_end.
        self._epoch_lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = float(trainer.callback_metrics["val_loss"])
        if loss < self.best_loss:  # False for NaN, so a diverged epoch is never "best"
            self.best_loss, self.best_epoch = loss, trainer.current_epoch
            state = pl_module.net.state_dict()  # type: ignore[union-attr]
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after validation, so every metric of the epoch is there.
        metrics = trainer.callback_metrics
        record = {
            "epoch": trainer.current_epoch,
            "train_loss": float(metrics["train_loss"]),
            "val_loss": float(metrics["val_loss"]),
            "val_accuracy": float(metrics["val_accuracy"]),
            "lr": self._epoch_lr,
        }
        self.history.append(record)
        if self.on_epoch_end is not None:
            self.on_epoch_end(record)


def _loader(data: tuple[np.ndarray, np.ndarray], batch_size: int, seed: int | None) -> DataLoader:
    inputs, labels = data
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
    dataset = TensorDataset(
        torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
    )
    # A seeded generator of its own makes the shuffling order depend on the seed only.
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=seed is not None, generator=generator, num_workers=0)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Mute Lightning's info lines and the num_workers hint; the caller reports progress."""
    names = ("lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    # Trainer(deterministic=True) switches a process-wide torch flag: restore it afterwards.
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # In-memory tensors need no worker processes; the hint does not apply here.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*", category=PossibleUserWarning)
            # Lightning 2.6 calls a pytree API that torch 2.13 deprecates; nothing for us to do.
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _accelerator(choice: str) -> str:
    if choice == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return choice


def _n_outputs(net: nn.Module, inputs: np.ndarray) -> int:
    """Logits per row, read off one forward pass (eval mode: BatchNorm cannot see 1 row)."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        width = int(net(torch.as_tensor(inputs[:1], dtype=torch.float32)).shape[-1])
    net.train(was_training)
    return width


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Weights n / (k * n_c) per class c, so that each class adds the same total to the loss.

    Without them a network on imbalanced data (arrests: 83% released) settles on the
    majority class; a class absent from training gets weight 0.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    present = counts > 0
    weights = np.zeros(len(counts), dtype=np.float32)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return torch.from_numpy(weights)


def train_model(
    net: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: TrainConfig,
    *,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = False,
) -> TrainResult:
    """Fit `net` with early stopping on validation loss; return it with its best weights.

    The network is trained in place; its initial weights are the caller's (seed before
    building it for a reproducible run). With the same seed, data and initial weights, a CPU
    fit gives bit-identical weights.

    Args:
        net: The network to fit (scratch or pretrained).
        train: Encoded float32 inputs, (n, features) or (n, channels, height, width), and
            int64 class indices 0..k-1.
        val: Validation inputs and labels of the same shapes.
        cfg: Optimizer, schedule, batch size, epochs, patience, seed and accelerator.
        on_epoch_end: Called after each epoch with that epoch's history record.
        progress: Show Lightning's progress bar.

    Returns:
        The fitted network and how the fit went.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    accelerator = _accelerator(cfg.accelerator)
    weights = balanced_class_weights(train[1], _n_outputs(net, train[0])) if cfg.class_weight == "balanced" else None
    module = ClassifierModule(net, cfg.lr, cfg.weight_decay, cfg.schedule, cfg.max_epochs, weights)
    recorder = _Recorder(on_epoch_end=on_epoch_end)
    with _quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=1,
            # Some CUDA kernels (max-pool backward) have no deterministic variant.
            deterministic=accelerator == "cpu",
            max_epochs=cfg.max_epochs,
            min_epochs=min(cfg.min_epochs, cfg.max_epochs),
            limit_train_batches=cfg.limit_train_batches,
            callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=cfg.patience), recorder],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        trainer.fit(
            module,
            train_dataloaders=_loader(train, cfg.batch_size, cfg.seed),
            val_dataloaders=_loader(val, cfg.batch_size, None),
        )
        fit_seconds = time.perf_counter() - start
    net.to("cpu")
    if recorder.best_state is not None:
        net.load_state_dict(recorder.best_state)
    net.eval()
    epochs_run = len(recorder.history)
    return TrainResult(
        model=net,
        history=recorder.history,
        best_epoch=recorder.best_epoch if recorder.best_epoch is not None else epochs_run - 1,
        epochs_run=epochs_run,
        stopped_early=epochs_run < cfg.max_epochs,
        device=recorder.device,
        fit_seconds=fit_seconds,
    )


def predict_proba(model: nn.Module, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (softmax of the logits), computed on CPU in batches.

    The model is moved to CPU and left in eval mode.

    Args:
        model: A classifier network returning logits.
        inputs: Encoded float32 inputs, (n, features) or (n, channels, height, width).
        batch_size: Rows per forward pass (bounds memory on large inputs).

    Returns:
        A float32 array (n, n_classes) whose rows sum to 1.
    """
    model.to("cpu").eval()
    tensor = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    with torch.inference_mode():
        parts = [torch.softmax(model(chunk), dim=1) for chunk in tensor.split(batch_size)]
    return torch.cat(parts).numpy()
