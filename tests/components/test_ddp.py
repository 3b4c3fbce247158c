"""DDP on CPU: two processes (gloo) spawned by `train_model` with `train.devices=2`.

What one process cannot show: the batches are split between the processes, only the first
one reports and checkpoints, and a divergence in one process stops them all (no hang).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import mlp, mlp_config, separable

from components.training import (
    CHECKPOINT_NAME,
    TrainingDiverged,
    _EpochOrder,
    checkpoint_position,
    serve_remote_fits,
    train_model,
)


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


def test_a_second_machine_joins_through_the_train_worker(tmp_path, monkeypatch) -> None:
    # Two "machines" on loopback: this process is node 0 (the flow's), a child process runs
    # node 1's worker, which receives the fit from node 0 and holds no checkpoint of its own.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    script = "from components.training import serve_remote_fits; print(serve_remote_fits('cpu', 1, 2, once=True))"
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": "0"}.items():
            monkeypatch.setenv(name, value)
        train, val = separable(n=400)
        result = train_model(mlp(), train, val, mlp_config(max_epochs=4, num_nodes=2), checkpoint_dir=tmp_path / "ckpt")
        output, _ = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert output.strip().splitlines()[-1] == "1"  # the worker took part in one fit
    assert result.epochs_run == 4
    assert result.history[-1]["val_accuracy"] >= 0.9
    assert checkpoint_position(tmp_path / "ckpt") == {"epoch": 4, "batch": 0, "step": 4 * 5}
    assert not list(tmp_path.glob("*.safetensors"))  # node 1 wrote nothing


def test_a_train_worker_refuses_to_be_node_0(monkeypatch) -> None:
    monkeypatch.setenv("NODE_RANK", "0")
    with pytest.raises(ValueError, match="NODE_RANK"):
        serve_remote_fits("cpu", 1, 2, once=True)
    with pytest.raises(ValueError, match="num_nodes >= 2"):
        serve_remote_fits("cpu", 1, 1, once=True)
