"""DDP on CPU: two processes (gloo) spawned by `train_model` with `train.devices=2`.

What one process cannot show: the batches are split between the processes, only the first
one reports and checkpoints, and a divergence in one process stops them all (no hang).
"""

from __future__ import annotations

import pytest
import torch
from test_training import mlp, mlp_config, separable

from components.training import CHECKPOINT_NAME, TrainingDiverged, _EpochOrder, checkpoint_position, train_model


def test_the_processes_split_each_epoch_and_take_equal_steps() -> None:
    # 10 rows in batches of 2: 5 batches; 2 processes take 3 steps each (the second wraps).
    orders = [_EpochOrder(10, 2, seed=0, limit=None, rank=rank, world=2) for rank in (0, 1)]
    for order in orders:
        order.begin()
    first, second = ([b.tolist() for b in order.batches(skip=0)] for order in orders)
    assert len(first) == len(second) == 3
    # Every row once before the wrap.
    assert sorted(row for batch in first + second[:2] for row in batch) == list(range(10))
    assert second[2] == first[0]  # the short process wraps around to the first batch
    single = _EpochOrder(10, 2, seed=0, limit=None)
    single.begin()
    assert [b.tolist() for b in single.batches(skip=0)] == [first[0], second[0], first[1], second[1], first[2]]


def test_two_cpu_processes_train_as_well_as_one(tmp_path) -> None:
    train, val = separable(n=400)
    cfg = mlp_config(max_epochs=6, devices=2)
    seen: list[dict] = []
    result = train_model(mlp(), train, val, cfg, on_epoch_end=seen.append, checkpoint_dir=tmp_path)
    alone = train_model(mlp(), train, val, mlp_config(max_epochs=6))

    # The callback ran here, in the parent, once per epoch: one process reported, not two.
    assert [record["epoch"] for record in seen] == list(range(6))
    assert seen == result.history
    assert result.epochs_run == 6
    # Each step averages two batches, so an epoch has half the steps of one process.
    assert checkpoint_position(tmp_path) == {"epoch": 6, "batch": 0, "step": 6 * 5}
    assert [path.name for path in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # one writer
    final, single = result.history[-1], alone.history[-1]
    assert final["val_accuracy"] >= 0.9 and single["val_accuracy"] >= 0.9
    assert final["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=0.05)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]  # it learnt
    # The parent's network holds the trained weights, on CPU.
    assert all(p.device.type == "cpu" for p in result.model.parameters())
    assert not torch.equal(result.model.state_dict()["backbone.0.weight"], mlp().state_dict()["backbone.0.weight"])


def test_a_divergence_stops_every_process_with_the_reason() -> None:
    train, val = separable()
    cfg = mlp_config(devices=2, gradient_clip_val=1e-3, max_grad_norm=1e-2)
    with pytest.raises(TrainingDiverged, match=r"^gradient norm .+ above 0\.01 at epoch 0, step 1$"):
        train_model(mlp(), train, val, cfg)
