"""Checkpoints and exact resume: a fit killed anywhere finishes with bit-identical weights.

The main test runs the real thing: child processes are SIGKILLed mid-fit at three points and
other processes resume them. The others check, in-process, every kill point of a small fit,
the atomic write, and that a foreign or corrupt checkpoint is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

import components.training as training
from components.config import TrainConfig
from components.models import build_model
from components.training import CHECKPOINT_NAME, checkpoint_position, train_model

# The fixed fit of the kill tests: 240 rows / batch 16 = 15 steps per epoch, 4 epochs, a
# checkpoint every 4 steps and at each epoch end.
STEPS_PER_EPOCH = 15


def fixed_fit(checkpoint_dir: Path | None) -> training.TrainResult:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > x[:, 2]).astype(np.int64) + (x[:, 3] > 0.5)
    cfg = TrainConfig(
        arch="mlp",
        lr=0.01,
        batch_size=16,
        max_epochs=4,
        patience=10,
        dropout=0.2,
        accelerator="cpu",
        checkpoint_every_n_steps=4,
    )
    torch.manual_seed(0)
    net = build_model("mlp", in_features=6, n_classes=3, hidden=[32, 16], dropout=0.2)
    return train_model(net, (x[:240], y[:240]), (x[240:], y[240:]), cfg, checkpoint_dir=checkpoint_dir)


def _stop_at(kill: str, at_kill_point: Any) -> None:
    """Make this process stop, waiting to be killed, at `kill`.

    `after:E:S`: once the checkpoint at epoch E, step S is on disk. `during:S`: inside the write
    of the checkpoint at step S, its temp file written and synced but not yet renamed.
    """

    def wait_for_kill() -> None:
        at_kill_point.set()
        time.sleep(120)

    if kill.startswith("after:"):
        real_write, (epoch, step) = training._write_atomic, map(int, kill.split(":")[1:])

        def write(path: Path, payload: bytes) -> None:
            real_write(path, payload)
            position = checkpoint_position(path.parent)
            if position is not None and (position["epoch"], position["step"]) == (epoch, step):
                wait_for_kill()

        training._write_atomic = write  # type: ignore[assignment]
    elif kill.startswith("during:"):
        real_replace, target = os.replace, int(kill.split(":")[1])

        def replace(src: str, dst: str) -> None:
            with safe_open(src, framework="pt") as file:
                if json.loads(file.metadata()[training._META_KEY])["fit"]["step"] == target:
                    wait_for_kill()
            real_replace(src, dst)

        training.os.replace = replace  # type: ignore[assignment]


def _child(checkpoint_dir: str, kill: str, out: str, at_kill_point: Any) -> None:
    """A child process: the fixed fit (stopping at `kill`), its outcome written to `out`."""
    _stop_at(kill, at_kill_point)
    result = fixed_fit(Path(checkpoint_dir) if checkpoint_dir else None)
    outcome = {
        "sha256": digest(result),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "resumed_from": result.resumed_from,
    }
    Path(out).write_text(json.dumps(outcome))


def test_sigkilled_fits_resume_to_the_same_weights_as_an_uninterrupted_fit(tmp_path: Path) -> None:
    # Children fork from a server that has imported torch and Lightning but trained nothing: each
    # is a fresh process that starts in a fraction of a second instead of several.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["components.training"])

    def start(name: str, checkpoint_dir: Path | None, kill: str = "none") -> tuple[Any, Any, Path]:
        event, out = context.Event(), tmp_path / f"{name}.json"
        process = context.Process(target=_child, args=(str(checkpoint_dir or ""), kill, str(out), event))
        process.start()
        return process, event, out

    def finish(process: Any, out: Path) -> dict[str, Any]:
        process.join(120)
        assert process.exitcode == 0
        return json.loads(out.read_text())

    # kill point -> where the resumed process must continue from
    kills = {
        "after:0:8": {"epoch": 0, "step": 8},  # mid-epoch, after the step-8 checkpoint
        "after:2:30": {"epoch": 2, "step": 30},  # between epochs, after epoch 1's end checkpoint
        "during:44": {"epoch": 2, "step": 40},  # mid-write of step 44: step 40's checkpoint stands
    }
    dirs = {kill: tmp_path / kill.replace(":", "_") for kill in kills}
    reference = start("reference", None)
    victims = {kill: start(f"killed-{i}", dirs[kill], kill) for i, kill in enumerate(kills)}
    for process, at_kill_point, _ in victims.values():
        assert at_kill_point.wait(120), "the child never reached its kill point"
        process.kill()  # SIGKILL
        process.join(60)
        assert process.exitcode == -signal.SIGKILL
    assert list(dirs["during:44"].glob(f".{CHECKPOINT_NAME}.*.tmp")), "the cut write left its temp file"
    for kill, position in kills.items():
        batch = position["step"] - STEPS_PER_EPOCH * position["epoch"]
        assert checkpoint_position(dirs[kill]) == position | {"batch": batch}

    resumed = {kill: start(f"resumed-{i}", dirs[kill]) for i, kill in enumerate(kills)}
    expected = finish(*reference[::2])
    assert expected["resumed_from"] is None
    assert len(expected["history"]) == 4
    hashes = {}
    for kill, (process, _, out) in resumed.items():
        outcome = finish(process, out)
        assert outcome["resumed_from"] == kills[kill]
        assert outcome["history"] == expected["history"]  # every epoch's losses, to the last bit
        assert outcome["best_epoch"] == expected["best_epoch"]
        hashes[kill] = outcome["sha256"]
    print("uninterrupted:", expected["sha256"], "resumed:", hashes)
    assert set(hashes.values()) == {expected["sha256"]}
    assert not list(dirs["during:44"].glob("*.tmp")), "the resumed fit removed the stale temp file"


# -- in-process ----------------------------------------------------------------------------


def blobs(n: int = 72, seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    cut = n * 2 // 3
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def random_labels(n: int = 72) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Labels unrelated to the inputs: validation loss is lowest after the first epoch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    cut = n * 2 // 3
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def config(**overrides: Any) -> TrainConfig:
    # 48 training rows / batch 10 = 5 steps per epoch (the last one short).
    values: dict[str, Any] = {
        "arch": "mlp",
        "lr": 0.02,
        "batch_size": 10,
        "max_epochs": 3,
        "patience": 5,
        "dropout": 0.3,
        "accelerator": "cpu",
        "checkpoint_every_n_steps": 2,
    }
    return TrainConfig(**(values | overrides))


def fit(
    cfg: TrainConfig, checkpoint_dir: Path | None = None, data: Any = None, init_seed: int = 0
) -> training.TrainResult:
    train, val = data or blobs()
    torch.manual_seed(init_seed)
    net = build_model("mlp", in_features=4, n_classes=2, hidden=[8], dropout=0.3)
    return train_model(net, train, val, cfg, checkpoint_dir=checkpoint_dir)


def digest(result: training.TrainResult) -> str:
    return hashlib.sha256(save({k: v.contiguous() for k, v in result.model.state_dict().items()})).hexdigest()


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way catches it."""


def test_checkpointing_changes_nothing_and_a_finished_fit_resumes_as_done(tmp_path: Path) -> None:
    plain = fit(config(checkpoint_every_n_steps=None))
    checkpointed = fit(config(checkpoint_every_n_steps=1), tmp_path)
    assert digest(checkpointed) == digest(plain)
    assert checkpointed.history == plain.history
    assert checkpointed.resumed_from is None
    # 3 epochs * 5 steps; the final (epoch end) checkpoint says so.
    assert checkpoint_position(tmp_path) == {"epoch": 3, "batch": 0, "step": 15}
    again = fit(config(), tmp_path)  # another checkpoint interval is still the same fit
    assert again.resumed_from == {"epoch": 3, "step": 15}
    assert digest(again) == digest(plain)
    assert again.history == plain.history and again.epochs_run == 3


def _killed_after(real_write: Any, writes: int) -> Any:
    """`_write_atomic` that "kills" the process right after its `writes`-th checkpoint."""
    count = 0

    def write(path: Path, payload: bytes) -> None:
        nonlocal count
        real_write(path, payload)
        count += 1
        if count == writes:
            raise Killed

    return write


def test_every_kill_point_resumes_bit_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, cfg = random_labels(), config(lr=0.1)
    reference = fit(cfg, data=data)
    # The best weights are epoch 0's: every later kill must bring them back from the checkpoint.
    assert reference.best_epoch == 0 and reference.epochs_run == 3
    # (epoch in progress, steps done) of each write: every 2 steps and at each epoch end (5
    # steps); at step 10 the step checkpoint (epoch 1's batches all done, not yet validated)
    # comes just before the epoch-end one. The last one is the finished fit.
    positions = [(0, 2), (0, 4), (1, 5), (1, 6), (1, 8), (1, 10), (2, 10), (2, 12), (2, 14), (3, 15)]
    real_write = training._write_atomic
    for kill_after, (epoch, step) in enumerate(positions, start=1):
        directory = tmp_path / str(kill_after)
        monkeypatch.setattr(training, "_write_atomic", _killed_after(real_write, kill_after))
        with pytest.raises(Killed):
            fit(cfg, directory, data)
        monkeypatch.setattr(training, "_write_atomic", real_write)
        resumed = fit(cfg, directory, data)
        assert resumed.resumed_from == {"epoch": epoch, "step": step}
        assert digest(resumed) == digest(reference), f"kill after write {kill_after}"
        assert resumed.history == reference.history


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fit(config(max_epochs=1), tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    # A write cut short by a crash leaves only its temp file behind ...
    (tmp_path / f".{CHECKPOINT_NAME}.abc123.tmp").write_bytes(b"\x00garbage, half a checkpoint")
    assert checkpoint_position(tmp_path) == {"epoch": 1, "batch": 0, "step": 5}

    # ... and a write that fails before its rename leaves neither a temp file nor a torn file.
    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(training.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        training._write_atomic(tmp_path / CHECKPOINT_NAME, b"new bytes")
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.glob("*.tmp")] == [f".{CHECKPOINT_NAME}.abc123.tmp"]

    resumed = fit(config(max_epochs=1), tmp_path)
    assert resumed.resumed_from == {"epoch": 1, "step": 5}
    assert not list(tmp_path.glob("*.tmp"))  # the stale temp file is cleared


def test_a_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="components.training"):
        result = fit(config(max_epochs=1), tmp_path)
    assert result.resumed_from is None
    assert "ignoring unreadable checkpoint" in caplog.text
    assert digest(result) == digest(fit(config(max_epochs=1, checkpoint_every_n_steps=None)))


@pytest.mark.parametrize("change", ["data", "settings", "initial weights"])
def test_a_checkpoint_of_another_fit_is_not_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    fit(config(max_epochs=1), tmp_path)
    data = blobs(seed=1) if change == "data" else blobs()
    cfg = config(max_epochs=1, lr=0.03) if change == "settings" else config(max_epochs=1)
    init_seed = 1 if change == "initial weights" else 0
    with caplog.at_level(logging.WARNING, logger="components.training"):
        result = fit(cfg, tmp_path, data, init_seed)
    assert result.resumed_from is None
    assert "belongs to another fit" in caplog.text
    fresh = fit(cfg.model_copy(update={"checkpoint_every_n_steps": None}), None, data, init_seed)
    assert digest(result) == digest(fresh)


def test_the_fingerprint_covers_the_initial_weights() -> None:
    train, val = blobs()
    torch.manual_seed(0)
    first = build_model("mlp", in_features=4, n_classes=2, hidden=[8])
    torch.manual_seed(1)
    second = build_model("mlp", in_features=4, n_classes=2, hidden=[8])
    cfg = config()
    assert training.fit_fingerprint(first, train, val, cfg) != training.fit_fingerprint(second, train, val, cfg)
    # The checkpoint interval does not change the trajectory, so it is left out.
    other_interval = config(checkpoint_every_n_steps=7)
    assert training.fit_fingerprint(first, train, val, cfg) == training.fit_fingerprint(
        first, train, val, other_interval
    )


def test_an_augmented_cnn_fit_resumes_bit_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Augmentation draws from a generator seeded by the step: a resumed fit must draw the same
    # transforms for the batches it has left as the uninterrupted fit did.
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 0.3, size=(48, 1, 8, 8)).astype(np.float32)
    labels = np.arange(48) % 2
    images[labels == 0, :, :4, :] += 0.7
    images[labels == 1, :, 4:, :] += 0.7
    data = (images[:40], labels[:40]), (images[40:], labels[40:])
    cfg = TrainConfig(
        arch="cnn",
        lr=0.01,
        batch_size=8,
        max_epochs=2,
        accelerator="cpu",
        checkpoint_every_n_steps=3,
        augment={"shift": 0.2, "rotate": 20, "scale": 0.1},
    )

    def cnn_fit(directory: Path | None) -> training.TrainResult:
        torch.manual_seed(0)
        net = build_model("cnn", in_channels=1, height=8, width=8, n_classes=2, channels=[4], dropout=0.0)
        return train_model(net, *data, cfg, checkpoint_dir=directory)

    reference = cnn_fit(None)
    real_write = training._write_atomic
    monkeypatch.setattr(training, "_write_atomic", _killed_after(real_write, 1))  # epoch 0, step 3 of 5
    with pytest.raises(Killed):
        cnn_fit(tmp_path)
    monkeypatch.setattr(training, "_write_atomic", real_write)
    resumed = cnn_fit(tmp_path)
    assert resumed.resumed_from == {"epoch": 0, "step": 3}
    assert digest(resumed) == digest(reference)
    assert resumed.history == reference.history
