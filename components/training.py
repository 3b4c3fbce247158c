"""Fit a classifier network deterministically on CPU, with a divergence guard and exact resume.

The network is a plain `nn.Module` (see :mod:`components.models`); :class:`ClassifierModule`
wraps it with the loss, the metrics and the optimizer (it still fits with ``pl.Trainer`` too).
:func:`train_model` runs the fit with early stopping and returns the network holding its
best-validation-loss weights, kept in memory.

Why a loop of our own on Lightning Fabric instead of ``Trainer.fit``: a fit killed mid-epoch
must continue bit-exactly, which needs this epoch's shuffling order, the batches already done,
the partial epoch loss and every counter. ``Trainer.fit(ckpt_path=...)`` restarts the
interrupted epoch, and its loop counters are internals, not an API. Fabric keeps what Lightning
is here for (the accelerator, DDP over processes and machines, bf16 mixed precision) while the
loop stays short and in view. Batches are cut from the in-memory tensors by index rather than by a DataLoader, which
is faster and draws no hidden random numbers (an iterated DataLoader seeds itself from torch's
global generator, which would shift dropout after a resume).

With `checkpoint_dir`, the fit writes one safetensors file, ``last.safetensors``, at every epoch
end and every `checkpoint_every_n_steps` optimizer steps: tensors (weights, best weights,
optimizer moments, RNG states) as tensors and the rest as JSON in its header, nothing pickled.
It is replaced atomically, so a kill at any instant leaves the previous or the new checkpoint,
never a torn one. A fingerprint of the data, the initial weights and the settings stops a
checkpoint of another fit from being resumed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric import Fabric
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn import functional as F

from components.config import AugmentConfig, ScheduleConfig, TrainConfig
from components.schedules import build_scheduler

EpochCallback = Callable[[dict[str, Any]], None]
Split = tuple[np.ndarray, np.ndarray]

CHECKPOINT_NAME = "last.safetensors"
_CHECKPOINT_FORMAT = 1
_META_KEY = "deepgate.training"
# Settings that cannot change the trajectory: a resume may differ in them.
_NOT_FINGERPRINTED = {"checkpoint_every_n_steps"}

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN/inf or the gradient norm exploded; the fit was stopped."""


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training of any classifier network.

    Args:
        net: The network; maps a batch of inputs to class logits.
        lr: Base learning rate of AdamW.
        weight_decay: AdamW weight decay.
        schedule: Learning-rate schedule, stepped once per epoch.
        max_epochs: Training length, which sets the default cosine period.
        class_weights: Per-class loss weights (None: every row counts the same).
        lr_mult: Multipliers of `lr` for the parameters under a submodule of `net`, by name
            (e.g. ``{"backbone": 0.1}`` for a pretrained backbone); each gets its own group.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float,
        weight_decay: float,
        schedule: ScheduleConfig,
        max_epochs: int,
        class_weights: torch.Tensor | None = None,
        lr_mult: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.max_epochs = max_epochs
        self.lr_mult = dict(lr_mult or {})
        # A buffer moves to the training device with the module.
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.class_weights: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.net(x)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean (class-weighted) cross-entropy of a batch."""
        return F.cross_entropy(logits, labels, weight=self.class_weights)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = self.loss(logits, labels)
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

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimizer group per learning rate: `lr` times the first matching `lr_mult`."""
        groups: dict[float, list[nn.Parameter]] = {}
        for name, param in self.net.named_parameters():
            mult = next((m for prefix, m in self.lr_mult.items() if f"{name}.".startswith(f"{prefix}.")), 1.0)
            groups.setdefault(mult, []).append(param)
        return [{"params": params, "lr": self.lr * mult} for mult, params in groups.items()]

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """AdamW over every parameter, with the epoch-wise schedule."""
        # Frozen parameters stay in: AdamW skips a parameter without a gradient (weight decay
        # included), and a layer unfrozen later must already be in the optimizer to train.
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = build_scheduler(optimizer, self.schedule, self.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    Attributes:
        model: The network with its best-validation-loss weights, in eval mode, on CPU.
        history: One dict per epoch: epoch (0-based), train_loss, val_loss, val_accuracy, lr.
        best_epoch: The epoch (0-based) whose weights `model` holds.
        epochs_run: Epochs trained, counting those of an interrupted run that this one resumed.
        stopped_early: Whether early stopping ended the fit before `max_epochs`.
        device: Where the fit ran, e.g. `cpu` or `cuda:0`.
        fit_seconds: Wall time of the fit (of this call only, when resumed).
        resumed_from: The checkpoint position this call continued from: `epoch` (0-based, the
            epoch then in progress) and `step` (optimizer steps already done); None if fresh.
        precision: Lightning's precision of the fit, e.g. `32-true` or `bf16-mixed`.
        processes: DDP processes over all machines (1: no DDP).
    """

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    device: str
    fit_seconds: float
    resumed_from: dict[str, int] | None = None
    precision: str = "32-true"
    processes: int = 1


@dataclass
class _FitState:
    """Everything of the fit besides tensors; saved as JSON in each checkpoint."""

    epoch: int = 0  # epochs completed, which is also the 0-based epoch in progress
    batch: int = 0  # batches done in the epoch in progress
    step: int = 0  # optimizer steps done
    loss_sum: float = 0.0  # row-weighted training loss so far in the epoch in progress
    rows: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_loss: float | None = None
    best_epoch: int | None = None
    wait: int = 0  # early stopping: epochs since the best one
    stopped: bool = False


class _EpochOrder:
    """Shuffled batches of row indices, one permutation per epoch, resumable mid-epoch.

    It remembers its generator's state from before the current epoch's permutation: a resumed
    fit restores that state, draws the same permutation and skips the batches already done.

    Under DDP every process draws the same permutation (same seed) and takes every
    `world`-th batch of it, starting at its `rank`: an optimizer step then sees `world`
    different batches. A process short of a batch at the end of the epoch wraps around to the
    first ones, as ``DistributedSampler`` pads, so that all take the same number of steps
    (a process waiting for a gradient that never comes would hang the others).
    """

    def __init__(
        self, n_rows: int, batch_size: int, seed: int, limit: int | float | None, rank: int = 0, world: int = 1
    ) -> None:
        self.n_rows, self.batch_size, self.rank, self.world = n_rows, batch_size, rank, world
        self.n_batches = _limit_batches(math.ceil(n_rows / batch_size), limit)
        self.n_steps = math.ceil(self.n_batches / world)  # optimizer steps per epoch
        self.generator = torch.Generator().manual_seed(seed)
        self._start = self.generator.get_state()
        self._perm: torch.Tensor | None = None

    def begin(self) -> None:
        """Draw this epoch's permutation."""
        self._start = self.generator.get_state()
        self._perm = torch.randperm(self.n_rows, generator=self.generator)

    def end(self) -> None:
        """Close the epoch."""
        self._perm = None

    @property
    def in_epoch(self) -> bool:
        """Whether an epoch's permutation is drawn and not yet used up."""
        return self._perm is not None

    def batches(self, skip: int) -> Iterator[torch.Tensor]:
        """Row indices of this process's batch for each step of the epoch, from step `skip` on."""
        assert self._perm is not None, "begin() the epoch first"
        for step in range(skip, self.n_steps):
            index = (step * self.world + self.rank) % self.n_batches
            yield self._perm[index * self.batch_size : (index + 1) * self.batch_size]

    def state(self) -> torch.Tensor:
        """The generator state to restore: before this epoch's draw, or now between epochs."""
        return self._start if self.in_epoch else self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        """Set the generator back; the next :meth:`begin` draws the interrupted epoch's order."""
        self.generator.set_state(state)
        self._perm = None


def _limit_batches(n_batches: int, limit: int | float | None) -> int:
    """Batches per epoch under `limit_train_batches` (an int count or a float fraction)."""
    if limit is None:
        return n_batches
    count = limit if isinstance(limit, int) else int(n_batches * limit)
    return max(1, min(n_batches, count))


def _tensors(data: Split, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = data
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
    if len(inputs) == 0:
        raise ValueError(f"no {name} rows")
    return (
        torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
    )


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # copy=True also unties shared tensors, which safetensors refuses to write.
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def _hash_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def fit_fingerprint(net: nn.Module, train: Split, val: Split, cfg: TrainConfig) -> str:
    """A hash of what determines a fit: data, initial weights and settings (SHA-256 hex).

    A checkpoint is resumed only by a call with the same fingerprint.
    """
    digest = hashlib.sha256()
    settings = cfg.model_dump(mode="json", exclude=_NOT_FINGERPRINTED)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, data in (("train", train), ("val", val)):
        inputs, labels = _tensors(data, name)
        _hash_tensor(digest, f"{name}.inputs", inputs)
        _hash_tensor(digest, f"{name}.labels", labels)
    for key, value in net.state_dict().items():
        _hash_tensor(digest, f"net.{key}", value)
    return digest.hexdigest()


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` so that a crash leaves either the old file or the new one."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    # Persist the rename itself (POSIX keeps it in the directory entry).
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and JSON header of a checkpoint file; None if missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = json.loads((file.metadata() or {})[_META_KEY])
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        logger.warning("ignoring unreadable checkpoint %s: %s", path, error)
        return None
    if meta.get("format") != _CHECKPOINT_FORMAT:
        logger.warning("ignoring checkpoint %s of format %s", path, meta.get("format"))
        return None
    return tensors, meta


def checkpoint_position(checkpoint_dir: Path) -> dict[str, int] | None:
    """Where the checkpoint in `checkpoint_dir` stands (`epoch`, `batch`, `step`), if any."""
    loaded = _read_checkpoint(Path(checkpoint_dir) / CHECKPOINT_NAME)
    if loaded is None:
        return None
    fit = loaded[1]["fit"]
    return {"epoch": fit["epoch"], "batch": fit["batch"], "step": fit["step"]}


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().to("cpu", copy=True)
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": plain}


def _join_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(index): dict(entry) for index, entry in meta["state"].items()}
    for name, value in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _capture_rng(order: _EpochOrder) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state(), "rng/order": order.state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, meta


def _restore_rng(tensors: Mapping[str, torch.Tensor], meta: dict[str, Any], order: _EpochOrder) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    order.restore(tensors["rng/order"])
    cuda = [tensors[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda/{i}" in tensors]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _by_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}


def _bf16_forward(module: nn.Module, device_type: str, inputs: torch.Tensor) -> torch.Tensor:
    # What Fabric's module wrapper does under bf16-mixed: the forward pass under autocast, the
    # logits back in float32 (so the loss is computed at full precision).
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        output = module(inputs)
    return output.float()


def _augments(cfg: AugmentConfig) -> bool:
    return cfg.shift > 0 or cfg.rotate > 0 or cfg.scale > 0


def augment_images(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random affine transform of each image: rotation, zoom and shift within `cfg`'s bounds.

    Args:
        images: A batch (batch, channels, height, width), already standardised.
        cfg: The largest rotation (degrees), zoom change and shift (fraction of the size).
        generator: A CPU generator; the draws do not depend on the images' device.

    Returns:
        The transformed batch, same shape, dtype and device. Pixels that come from outside the
        image repeat its border.
    """
    n = images.shape[0]
    draw = torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1)
    angle = draw[:, 0] * math.radians(cfg.rotate)
    zoom = 1 + draw[:, 1] * cfg.scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # affine_grid's coordinates span [-1, 1]: a shift of a fraction f of the size is 2f there.
    shift_x, shift_y = draw[:, 2] * 2 * cfg.shift, draw[:, 3] * 2 * cfg.shift
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _clip_gradients(params: list[nn.Parameter], clip: float | None) -> float:
    """Clip the gradients to norm `clip` (None: leave them); return their norm before clipping.

    The norm is the one from before clipping so that clipping cannot hide a blow-up from the
    divergence guard. Without `clip` the norm is only measured: scaling every gradient by 1
    (``clip_grad_norm_`` with an infinite bound) cost a quarter of a small MLP's step.
    No precision in use scales the loss (bf16 needs no scaler), so the gradients are read as is.
    """
    return float(_gradient_norm(params, clip))


def _gradient_norm(params: list[nn.Parameter], clip: float | None) -> torch.Tensor:
    # :func:`_clip_gradients` without reading the norm back: a 0-d tensor on the gradients' device.
    grads = [param.grad for param in params if param.grad is not None]
    if not grads:
        return torch.zeros(())
    if clip is None:
        # Every tensor's norm in one fused call, then their 2-norm: what `get_total_norm`
        # computes, without its compiler guards, on a step of a fraction of a millisecond.
        with torch.no_grad():
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return torch.nn.utils.clip_grad_norm_(params, clip, error_if_nonfinite=False)


def _defers_guard(device: torch.device) -> bool:
    """Whether the gradient-norm guard is read once per epoch rather than at every step.

    On a GPU, reading the norm back every step stalls the queue of kernels (the step's loss is
    read anyway, for the epoch's loss); the norm then waits on the device and is read at the
    epoch's end and before each checkpoint, so that no checkpoint holds weights past a blow-up.
    The fit still stops with the step that tripped it. On CPU the read costs nothing.
    """
    return device.type != "cpu"


class _Fit:
    """One fit: the loop, its state and its checkpoints. Use :func:`train_model`."""

    def __init__(
        self,
        fabric: Fabric,
        module: ClassifierModule,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        cfg: TrainConfig,
        on_epoch_end: EpochCallback | None,
        progress: bool,
    ) -> None:
        self.fabric, self.cfg = fabric, cfg
        # The data sit in memory already; moved to the device once, not batch by batch.
        self.train, self.val = fabric.to_device(train), fabric.to_device(val)
        self.lead = fabric.global_rank == 0  # the one process that reports and checkpoints
        self.on_epoch_end, self.progress = on_epoch_end, progress and self.lead
        config = module.configure_optimizers()
        self.scheduler = config["lr_scheduler"]["scheduler"]  # type: ignore[index]
        self.net = module.net
        self.params = list(self.net.parameters())
        self.module, self.optimizer = fabric.setup(module, config["optimizer"])
        # One process: Fabric's wrappers have nothing to add (no gradient sync, no loss
        # scaling; bf16 needs only autocast) but cost ~0.1 ms a step on CPU, an eighth of a
        # small MLP's step, and a fifth of the mnist CNN's throughput on an H100. The raw
        # module and optimizer are then used directly; DDP goes through Fabric.
        precision = str(fabric.strategy.precision.precision)
        plain = fabric.world_size == 1 and precision in ("32-true", "bf16-mixed")
        if not plain:
            self._forward: Callable[[torch.Tensor], torch.Tensor] = self.module
        elif precision == "bf16-mixed":
            self._forward = functools.partial(_bf16_forward, module, fabric.device.type)
        else:
            self._forward = module
        self._backward = (lambda loss: loss.backward()) if plain else fabric.backward
        self._step = config["optimizer"].step if plain else self.optimizer.step
        self.augment = cfg.augment if cfg.augment is not None and _augments(cfg.augment) else None
        # One process only: under DDP a process whose loss is NaN stops at once, and the others
        # must see it in the (shared) gradient norm at the same step, or they wait forever.
        self.defer_guard = fabric.world_size == 1 and _defers_guard(fabric.device)
        # The deferred guard's record: the first step over the bound (-1: none yet) and its norm.
        self.tripped = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=fabric.device)
        self.rank = fabric.global_rank
        self.loss = module.loss
        self.order = _EpochOrder(
            len(train[0]), cfg.batch_size, cfg.seed, cfg.limit_train_batches, fabric.global_rank, fabric.world_size
        )
        self.state = _FitState()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.path: Path | None = None
        self.fingerprint = ""

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Train until `max_epochs` or early stopping (from wherever the state stands)."""
        while not self.state.stopped and self.state.epoch < self.cfg.max_epochs:
            if not self.order.in_epoch:
                self.order.begin()
            self._train_batches()
            self._end_epoch()

    def _freeze_backbone(self) -> None:
        # Transfer learning: feature extraction first (backbone frozen), then, from
        # `unfreeze_after`, fine-tuning at the backbone's lower learning rate. Derived from the
        # epoch alone, so a resumed fit freezes exactly as the uninterrupted one did.
        backbone = getattr(self.net, "backbone", None)
        if self.cfg.init != "transfer" or backbone is None:
            return
        after = self.cfg.unfreeze_after
        trainable = after is not None and self.state.epoch >= after
        for param in backbone.parameters():
            param.requires_grad_(trainable)
        if not trainable:
            # A frozen backbone must also keep its normalisation statistics: in train mode
            # BatchNorm would normalise by the statistics of a few-shot batch and overwrite the
            # running ones the base learnt on thousands of images. Dropout stays on.
            for layer in backbone.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    def _train_batches(self) -> None:
        state, (inputs, labels) = self.state, self.train
        every = self.cfg.checkpoint_every_n_steps
        self.module.train()
        self._freeze_backbone()
        distributed = self.fabric.world_size > 1
        for index in self.order.batches(skip=state.batch):
            batch_labels, batch = labels[index], inputs[index]
            if self.augment is not None:
                # Seeded by the step (and process), not by a running generator: a resumed fit
                # draws exactly the transforms the uninterrupted one did.
                seed = ((self.cfg.seed + 1) * 1_000_003 + state.step) * 1_024 + self.rank
                batch = augment_images(batch, self.augment, torch.Generator().manual_seed(seed))
            loss = self.loss(self._forward(batch), batch_labels)
            value = float(loss.detach())
            where = f"at epoch {state.epoch}, step {state.step + 1}"
            # Under DDP every process must reach backward (its gradient all-reduce) or the
            # others wait forever; a NaN loss in one process then shows in every process's
            # gradient norm, so all of them stop at the same step.
            if not distributed and not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} {where}")
            self.optimizer.zero_grad(set_to_none=True)
            self._backward(loss)
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} {where}")
            self._guard_and_clip(where)
            self._step()
            state.step, state.batch = state.step + 1, state.batch + 1
            state.loss_sum, state.rows = state.loss_sum + value * len(index), state.rows + len(index)
            if every is not None and state.step % every == 0:
                self._checkpoint()

    def _guard_and_clip(self, where: str) -> None:
        if self.defer_guard:
            norm = _gradient_norm(self.params, self.cfg.gradient_clip_val).to(self.tripped)
            first = ~(norm <= self.cfg.max_grad_norm) & (self.tripped[0] < 0)  # `~(<=)`: NaN too
            step = torch.full_like(norm, self.state.step + 1)
            self.tripped.copy_(torch.where(first, torch.stack([step, norm]), self.tripped))
            return
        value = _clip_gradients(self.params, self.cfg.gradient_clip_val)
        if not value <= self.cfg.max_grad_norm:  # also catches NaN
            raise TrainingDiverged(f"gradient norm {value:.2g} above {self.cfg.max_grad_norm:.2g} {where}")

    def _check_deferred_guard(self) -> None:
        step, norm = self.tripped.tolist()
        if step >= 0:
            # Read at the end of the epoch or before a checkpoint: the step is in this epoch.
            where = f"at epoch {self.state.epoch}, step {int(step)}"
            raise TrainingDiverged(f"gradient norm {norm:.2g} above {self.cfg.max_grad_norm:.2g} {where}")

    def _end_epoch(self) -> None:
        self._check_deferred_guard()
        state = self.state
        lr = float(self.scheduler.get_last_lr()[0])  # the rate this epoch trained with
        self.scheduler.step()
        self.order.end()
        val_loss, val_accuracy = self._validate()
        if self.fabric.world_size > 1:
            # BatchNorm statistics differ a little between processes (each updates them on its
            # own batches), so their validation losses can too: all follow the first process's,
            # or they could disagree on stopping and leave one waiting for the others forever.
            val_loss, val_accuracy = self.fabric.broadcast((val_loss, val_accuracy), src=0)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss became {val_loss} at epoch {state.epoch}")
        record = {
            "epoch": state.epoch,
            "train_loss": self._epoch_train_loss(),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr,
        }
        self._early_stopping(val_loss)
        state.history.append(record)
        state.epoch, state.batch, state.loss_sum, state.rows = state.epoch + 1, 0, 0.0, 0
        state.stopped = state.wait >= self.cfg.patience and state.epoch >= self.cfg.min_epochs
        if self.progress:
            print(_progress_line(record, self.cfg.max_epochs), file=sys.stderr)
        if self.on_epoch_end is not None and self.lead:
            self.on_epoch_end(record)
        self._checkpoint()

    def _epoch_train_loss(self) -> float:
        """Row-weighted mean training loss of the epoch, over every process's batches."""
        state = self.state
        if self.fabric.world_size == 1:
            return state.loss_sum / state.rows
        sums = torch.tensor([state.loss_sum, float(state.rows)], dtype=torch.float64, device=self.fabric.device)
        reduced = self.fabric.all_reduce(sums, reduce_op="sum")
        assert isinstance(reduced, torch.Tensor)
        total, rows = reduced.tolist()
        return total / rows

    def _early_stopping(self, val_loss: float) -> None:
        state = self.state
        if state.best_loss is None or val_loss < state.best_loss:
            state.best_loss, state.best_epoch, state.wait = val_loss, state.epoch, 0
            self.best_state = _cpu_copy(self.net.state_dict())
        else:
            state.wait += 1

    def _validate(self) -> tuple[float, float]:
        inputs, labels = self.val
        size, loss_sum, correct = self.cfg.batch_size, 0.0, 0
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, len(labels), size):
                batch = (inputs[start : start + size], labels[start : start + size])
                logits = self.module(batch[0])
                loss_sum += float(self.loss(logits, batch[1])) * len(batch[1])
                correct += int((logits.argmax(dim=1) == batch[1]).sum())
        return loss_sum / len(labels), correct / len(labels)

    # -- checkpoints ----------------------------------------------------------------------

    def use_checkpoints(self, checkpoint_dir: Path, fingerprint: str) -> dict[str, int] | None:
        """Checkpoint into `checkpoint_dir`; resume from its checkpoint when it is this fit's."""
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.path, self.fingerprint = checkpoint_dir / CHECKPOINT_NAME, fingerprint
        for stale in checkpoint_dir.glob(f".{CHECKPOINT_NAME}.*.tmp") if self.lead else ():
            stale.unlink(missing_ok=True)  # a write cut short by a crash
        loaded = _read_checkpoint(self.path)
        if loaded is None:
            return None
        tensors, meta = loaded
        if meta.get("fingerprint") != fingerprint:
            logger.warning(
                "checkpoint %s belongs to another fit (other data, initial weights or settings); starting fresh",
                self.path,
            )
            return None
        self._restore(tensors, meta)
        position = {"epoch": self.state.epoch, "step": self.state.step}
        logger.info("resuming from %s at epoch %d, step %d", self.path, position["epoch"], position["step"])
        return position

    def _checkpoint(self) -> None:
        self._check_deferred_guard()
        # Under DDP the weights and optimizer state are the same in every process: one writes.
        if self.path is None or not self.lead:
            return
        tensors = {f"model/{k}": v for k, v in _cpu_copy(self.net.state_dict()).items()}
        if self.best_state is not None:
            tensors |= {f"best/{k}": v for k, v in self.best_state.items()}
        optimizer_tensors, optimizer_meta = _split_optimizer_state(self.optimizer.state_dict())
        rng_tensors, rng_meta = _capture_rng(self.order)
        meta = {
            "format": _CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "fit": asdict(self.state),
            "optimizer": optimizer_meta,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_meta,
        }
        payload = safetensors_bytes(tensors | optimizer_tensors | rng_tensors, metadata={_META_KEY: json.dumps(meta)})
        _write_atomic(self.path, payload)

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.net.load_state_dict(_by_prefix(tensors, "model/"))
        self.best_state = _by_prefix(tensors, "best/") or None
        # After fabric.setup, so that the moments are cast onto the parameters' device.
        self.optimizer.load_state_dict(_join_optimizer_state(_by_prefix(tensors, "optim/"), meta["optimizer"]))
        self.scheduler.load_state_dict(meta["scheduler"])
        self.state = _FitState(**meta["fit"])
        _restore_rng(tensors, meta["rng"], self.order)


def _progress_line(record: dict[str, Any], max_epochs: int) -> str:
    return (
        f"epoch {record['epoch'] + 1}/{max_epochs}: train_loss {record['train_loss']:.4f} "
        f"val_loss {record['val_loss']:.4f} val_accuracy {record['val_accuracy']:.4f} lr {record['lr']:.3g}"
    )


@contextlib.contextmanager
def _fit_environment(deterministic: bool) -> Iterator[None]:
    """Deterministic kernels for the fit only, and no Lightning chatter; restored afterwards."""
    names = ("lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
        if deterministic:
            torch.use_deterministic_algorithms(True)
        with warnings.catch_warnings():
            # Lightning 2.6 calls a pytree API that torch 2.13 deprecates; nothing for us to do.
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        torch.use_deterministic_algorithms(was_deterministic, warn_only=warn_only)


def _accelerator(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if choice == "gpu" else choice


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
    train: Split,
    val: Split,
    cfg: TrainConfig,
    *,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = False,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Fit `net` with early stopping on validation loss; return it with its best weights.

    The network is trained in place; its initial weights are the caller's (seed before
    building it for a reproducible run). With the same seed, data and initial weights, a CPU
    fit gives bit-identical weights, also when it was killed and resumed from a checkpoint.

    Args:
        net: The network to fit (scratch or pretrained).
        train: Encoded float32 inputs, (n, features) or (n, channels, height, width), and
            int64 class indices 0..k-1.
        val: Validation inputs and labels of the same shapes.
        cfg: Optimizer, schedule, batch size, epochs, patience, seed, accelerator, gradient
            clipping, divergence threshold and checkpoint interval.
        on_epoch_end: Called after each epoch trained in this call with its history record
            (epochs restored from a checkpoint are not replayed; `history` has them all).
        progress: Print one line per epoch to stderr.
        checkpoint_dir: Write ``last.safetensors`` here at each epoch end and every
            `cfg.checkpoint_every_n_steps` steps, and resume from it if it holds this fit's.

    Returns:
        The fitted network and how the fit went.

    Raises:
        TrainingDiverged: A NaN/inf loss, or a gradient norm (before clipping) above
            `cfg.max_grad_norm`.
    """
    train_tensors, val_tensors = _tensors(train, "training"), _tensors(val, "validation")
    fingerprint = fit_fingerprint(net, train, val, cfg) if checkpoint_dir is not None else ""
    accelerator = _accelerator(cfg.accelerator)
    precision = _precision(cfg.precision, accelerator)
    # Some CUDA kernels (max-pool backward) have no deterministic variant.
    with _fit_environment(deterministic=accelerator == "cpu"):
        if cfg.devices * cfg.num_nodes == 1:
            fabric = Fabric(accelerator=accelerator, devices=1, precision=precision)  # type: ignore[arg-type]
            outcome = _fit_here(
                fabric, net, train_tensors, val_tensors, cfg, on_epoch_end, progress, checkpoint_dir, fingerprint
            )
        else:
            outcome = _fit_distributed(
                net,
                train_tensors,
                val_tensors,
                cfg,
                accelerator,
                precision,
                on_epoch_end,
                progress,
                checkpoint_dir,
                fingerprint,
            )
    if "diverged" in outcome:
        raise TrainingDiverged(outcome["diverged"])
    net.to("cpu")
    net.load_state_dict(safetensors_load(outcome.pop("weights")))
    net.eval()
    return TrainResult(model=net, **outcome)


def _fit_here(
    fabric: Fabric,
    net: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    on_epoch_end: EpochCallback | None,
    progress: bool,
    checkpoint_dir: Path | None,
    fingerprint: str,
) -> dict[str, Any]:
    """Run the fit in this process (one of several under DDP); return its outcome as plain data.

    The outcome holds either ``diverged`` (the reason) or ``weights`` (the best state dict as
    safetensors bytes) and the other fields of :class:`TrainResult`: plain data, so that it can cross from a
    DDP worker back to the parent.
    """
    seed_everything(cfg.seed, verbose=False)
    weights = None
    if cfg.class_weight == "balanced":
        weights = balanced_class_weights(train[1].numpy(), _n_outputs(net, train[0][:1].numpy()))
    lr_mult = {"backbone": cfg.backbone_lr_mult} if cfg.init == "transfer" else None
    module = ClassifierModule(net, cfg.lr, cfg.weight_decay, cfg.schedule, cfg.max_epochs, weights, lr_mult)
    fit = _Fit(fabric, module, train, val, cfg, on_epoch_end, progress)
    resumed_from = fit.use_checkpoints(Path(checkpoint_dir), fingerprint) if checkpoint_dir is not None else None
    start = time.perf_counter()
    try:
        fit.run()
    except TrainingDiverged as error:
        if fabric.world_size == 1:
            raise
        # Returned, not raised: an exception in a worker reaches the parent as a generic
        # ProcessRaisedException with the traceback flattened into a string.
        return {"diverged": str(error)}
    fit_seconds = time.perf_counter() - start
    state = fit.state
    epochs_run = len(state.history)
    best = fit.best_state if fit.best_state is not None else _cpu_copy(fit.net.state_dict())
    return {
        # As safetensors bytes: a tensor sent through a multiprocessing queue travels as a
        # shared-memory handle, which dies with the worker before the parent can read it.
        "weights": safetensors_bytes(best),
        "history": state.history,
        "best_epoch": state.best_epoch if state.best_epoch is not None else epochs_run - 1,
        "epochs_run": epochs_run,
        "stopped_early": epochs_run < cfg.max_epochs,
        "device": str(fabric.device),
        "fit_seconds": fit_seconds,
        "resumed_from": resumed_from,
        "precision": str(fabric.strategy.precision.precision),
        "processes": fabric.world_size,
    }


def _ddp_worker(
    fabric: Fabric,
    net: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    progress: bool,
    checkpoint_dir: Path | None,
    fingerprint: str,
    records: Any,
) -> dict[str, Any]:
    """The fit in one DDP process; the first process sends each epoch's record to the parent."""
    if fabric.world_size > cfg.devices:
        # Processes on the other machines (`serve_remote_fits`) start with nothing: the first
        # process sends them the fit, and the checkpoint to resume from, which is on its disk.
        checkpoint = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None
        payload = {
            "net": net,
            "train": train,
            "val": val,
            "cfg": cfg.model_dump(mode="json"),
            "fingerprint": fingerprint,
            "checkpoint": checkpoint.read_bytes() if checkpoint is not None and checkpoint.is_file() else None,
        }
        fabric.broadcast(payload if fabric.global_rank == 0 else None, src=0)
    with _fit_environment(deterministic=fabric.device.type == "cpu"):
        return _fit_here(fabric, net, train, val, cfg, records.put, progress, checkpoint_dir, fingerprint)


def _remote_worker(fabric: Fabric) -> None:
    """This machine's processes of a fit that the flow's machine (node 0) leads."""
    # The process group is ours alone (MASTER_ADDR/MASTER_PORT of our own node 0); what comes
    # through it is as trusted as the gradients that will.
    nothing: Any = None  # what this process sends: the first process's payload comes back
    payload: dict[str, Any] = fabric.broadcast(nothing, src=0)
    cfg = TrainConfig(**payload["cfg"])
    with tempfile.TemporaryDirectory(prefix="deepgate-resume-") as folder:
        checkpoint_dir = None
        if payload["checkpoint"] is not None:
            checkpoint_dir = Path(folder)
            (checkpoint_dir / CHECKPOINT_NAME).write_bytes(payload["checkpoint"])
        with _fit_environment(deterministic=fabric.device.type == "cpu"):
            net, train, val, fingerprint = payload["net"], payload["train"], payload["val"], payload["fingerprint"]
            _fit_here(fabric, net, train, val, cfg, None, False, checkpoint_dir, fingerprint)


def serve_remote_fits(
    accelerator: str = "auto", devices: int = 1, num_nodes: int = 2, precision: str = "auto", once: bool = False
) -> int:
    """Take part, from a machine other than the flow's, in the DDP fits the flow launches.

    The flow's machine is node 0 and runs ``deepgate run`` with ``train.num_nodes`` and
    ``train.devices`` set; each other machine runs this (``deepgate train-worker``) with the
    same `devices`, `num_nodes` and `accelerator`, and the environment variables
    ``MASTER_ADDR`` (node 0's address), ``MASTER_PORT`` (the same free port everywhere) and
    ``NODE_RANK`` (1, 2, ...). Everything else (network, data, settings, checkpoint) comes from
    node 0 when a fit starts; only node 0 checkpoints and talks to MLflow.

    Args:
        accelerator: ``auto``, ``cpu`` or ``gpu``, as node 0's `train.accelerator`.
        devices: Processes (GPUs) on this machine, as `train.devices`.
        num_nodes: Machines in all, node 0 included, as `train.num_nodes`.
        precision: As `train.precision`.
        once: Return after one fit instead of waiting for the next.

    Returns:
        The number of fits this machine took part in.
    """
    if num_nodes < 2:
        raise ValueError("a train worker needs num_nodes >= 2 (node 0 is the machine that runs the flow)")
    if int(os.environ.get("NODE_RANK", "0")) < 1:
        raise ValueError("set NODE_RANK to this machine's rank (1 .. num_nodes-1); node 0 runs the flow")
    device = _accelerator(accelerator)
    fits = 0
    while True:
        fabric = Fabric(
            accelerator=device,
            devices=devices,
            num_nodes=num_nodes,
            strategy="ddp_spawn",
            precision=_precision(precision, device),  # type: ignore[arg-type]
        )
        fabric.launch(_remote_worker)
        fits += 1
        if once:
            return fits


def _fit_distributed(
    net: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    accelerator: str,
    precision: str,
    on_epoch_end: EpochCallback | None,
    progress: bool,
    checkpoint_dir: Path | None,
    fingerprint: str,
) -> dict[str, Any]:
    """Fit with DDP over `cfg.devices` processes spawned from this one (gloo on CPU, NCCL on GPUs).

    With `cfg.num_nodes` above 1 this machine is node 0 and the processes of the others
    (:func:`serve_remote_fits`) join through ``MASTER_ADDR``/``MASTER_PORT``.

    Spawned, not forked: forking a process that runs threads (Prefect's, a server's) can
    deadlock the child. Only this process talks to MLflow: the first worker sends each epoch's
    record through a queue and a thread here hands it to `on_epoch_end`, so the callback runs
    once per epoch, in the process that owns the run.
    """
    fabric = Fabric(
        accelerator=accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy="ddp_spawn",
        precision=precision,  # type: ignore[arg-type]
    )
    records = torch.multiprocessing.get_context("spawn").SimpleQueue()
    failures: list[BaseException] = []

    def relay() -> None:
        while (record := records.get()) is not None:
            if on_epoch_end is not None and not failures:
                try:
                    on_epoch_end(record)
                except Exception as error:  # raised here once the workers are done
                    failures.append(error)

    listener = threading.Thread(target=relay, name="deepgate-ddp-records", daemon=True)
    listener.start()
    try:
        worker = functools.partial(
            _ddp_worker,
            net=net,
            train=train,
            val=val,
            cfg=cfg,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            fingerprint=fingerprint,
            records=records,
        )
        outcome = fabric.launch(worker)
    finally:
        records.put(None)  # queued after every record of the first worker: it has returned
        listener.join()
    if failures:
        raise failures[0]
    return outcome


def _precision(choice: str, accelerator: str) -> str:
    """The Fabric precision for `train.precision` on `accelerator` (auto: bf16 where supported)."""
    if choice != "auto":
        return choice
    if accelerator == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


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
