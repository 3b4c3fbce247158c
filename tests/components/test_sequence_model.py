"""Sequence classifiers (GRU, 1-D convolution): shapes, hand-computed outputs, learning, determinism."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from components.config import TrainConfig
from components.models import ARCHITECTURES, Conv1dClassifier, GRUClassifier, build_model
from components.training import predict_proba, train_model

GRU_PARAMS: dict[str, Any] = {"in_features": 2, "n_classes": 2, "hidden": [16], "dropout": 0.0}
CONV_PARAMS: dict[str, Any] = {"in_features": 2, "n_classes": 2, "channels": [8], "dropout": 0.0}


def marker_sequences(n: int, length: int = 8, first_half: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature 0 is noise, feature 1 holds a single 1.0 marker; labels alternate 1, 0, 1, ...

    With `first_half`, every sequence has a marker and the label says whether it lies in the
    first half (order matters); otherwise the label says whether there is a marker at all.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n, length, 2), dtype=np.float32)
    x[:, :, 0] = rng.normal(scale=0.3, size=(n, length))
    y = (np.arange(n) % 2 == 0).astype(np.int64)
    half = length // 2
    if first_half:
        position = rng.integers(0, half, size=n) + np.where(y == 1, 0, half)
        x[np.arange(n), position, 1] = 1.0
    else:
        rows = np.flatnonzero(y == 1)
        x[rows, rng.integers(0, length, size=len(rows)), 1] = 1.0
    return x, y


def train_config(**overrides: Any) -> TrainConfig:
    # train_model never reads cfg.arch (the caller builds the network), so "mlp" only fills
    # a required field that does not yet list the sequence architectures.
    values: dict[str, Any] = {
        "arch": "mlp",
        "lr": 0.02,
        "batch_size": 16,
        "max_epochs": 20,
        "patience": 50,
        "accelerator": "cpu",
        "schedule": {"kind": "constant"},
    }
    return TrainConfig(**(values | overrides))


def fit(arch: str, params: dict[str, Any], data: tuple[np.ndarray, np.ndarray], seed: int = 0, **cfg: Any) -> Any:
    x, y = data
    cut = len(x) * 3 // 4
    torch.manual_seed(seed)  # the initial weights are the caller's to seed
    net = build_model(arch, **params)
    return train_model(net, (x[:cut], y[:cut]), (x[cut:], y[cut:]), train_config(seed=seed, **cfg))


def test_both_architectures_are_registered_for_build_model() -> None:
    assert ARCHITECTURES["gru"] is GRUClassifier
    assert ARCHITECTURES["conv1d"] is Conv1dClassifier
    assert isinstance(build_model("gru", **GRU_PARAMS), GRUClassifier)


@pytest.mark.parametrize(
    ("arch", "params", "width"),
    [
        ("gru", {"in_features": 3, "n_classes": 4, "hidden": [6, 5], "dropout": 0.2}, 5),
        ("conv1d", {"in_features": 3, "n_classes": 4, "channels": [6, 7], "dropout": 0.2, "kernel_size": 5}, 7),
    ],
)
def test_any_length_gives_one_row_of_logits_per_sequence(arch: str, params: dict[str, Any], width: int) -> None:
    net = build_model(arch, **params).eval()
    for length in (1, 5, 9):
        x = torch.randn(3, length, 3)
        assert net(x).shape == (3, 4)
        assert net.backbone(x).shape == (3, width)  # the head sees hidden[-1] / channels[-1] features


@pytest.mark.parametrize(("arch", "params"), [("gru", GRU_PARAMS), ("conv1d", CONV_PARAMS)])
def test_a_tensor_that_is_not_a_batch_of_sequences_is_refused(arch: str, params: dict[str, Any]) -> None:
    net = build_model(arch, **params)
    with pytest.raises(ValueError, match=r"\(batch, length, 2\), got \(5, 2\)"):
        net(torch.zeros(5, 2))  # one unbatched sequence: nn.GRU would accept it silently
    with pytest.raises(ValueError, match="got \\(4, 5, 3\\)"):
        net(torch.zeros(4, 5, 3))  # wrong feature count


def test_bad_constructor_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="hidden"):
        GRUClassifier(in_features=2, n_classes=2, hidden=[])
    with pytest.raises(ValueError, match="channels"):
        Conv1dClassifier(in_features=2, n_classes=2, channels=[])
    with pytest.raises(ValueError, match="odd"):
        Conv1dClassifier(in_features=2, n_classes=2, channels=[4], kernel_size=2)
    with pytest.raises(ValueError, match="pool"):
        Conv1dClassifier(in_features=2, n_classes=2, channels=[4], pool="sum")  # type: ignore[arg-type]


def test_gru_logit_is_read_from_the_final_hidden_state() -> None:
    # One unit; all weights 0 but the candidate's input weight (1) and the head (1):
    # z = sigmoid(0) = 1/2 and n_t = tanh(x_t), so h_t = tanh(x_t) / 2 + h_{t-1} / 2.
    net = GRUClassifier(in_features=1, n_classes=1, hidden=[1])
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        gru = net.backbone[0].layers[0]
        gru.weight_ih_l0[2, 0] = 1.0  # rows: reset, update, new (candidate)
        net.head.weight.fill_(1.0)
        logits = net.eval()(torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]]))
    # [1, 0]: h1 = tanh(1)/2, h2 = h1/2;  [0, 1]: h1 = 0, h2 = tanh(1)/2.
    assert logits[:, 0].tolist() == pytest.approx([math.tanh(1) / 4, math.tanh(1) / 2], abs=1e-6)


@pytest.mark.parametrize(("pool", "expected"), [("max", 3.0), ("avg", 5.0 / 3.0)])
def test_conv1d_pools_the_rectified_responses_over_time(pool: str, expected: float) -> None:
    net = Conv1dClassifier(in_features=1, n_classes=1, channels=[1], kernel_size=1, pool=pool)  # type: ignore[arg-type]
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        net.backbone[1].weight.fill_(1.0)  # the conv: identity on the one feature
        net.backbone[2].weight.fill_(1.0)  # BatchNorm scale; in eval it divides by sqrt(1 + eps)
        net.head.weight.fill_(1.0)
        logit = net.eval()(torch.tensor([[[-1.0], [3.0], [2.0]]]))
    # ReLU turns -1 into 0: max(0, 3, 2) = 3, mean(0, 3, 2) = 5/3.
    assert float(logit) == pytest.approx(expected / math.sqrt(1 + 1e-5), abs=1e-6)


def test_swapping_the_head_keeps_the_backbone() -> None:
    torch.manual_seed(0)
    net = build_model("gru", **GRU_PARAMS).eval()
    x = torch.randn(4, 6, 2)
    features = net.backbone(x)
    net.head = nn.Linear(16, 5)  # what transfer learning does: a new head for a new label set
    assert net(x).shape == (4, 5)
    assert torch.equal(net.backbone(x), features)


def test_gru_learns_whether_the_marker_is_in_the_first_half() -> None:
    result = fit("gru", GRU_PARAMS, marker_sequences(60))
    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 10
    assert history[-1]["val_accuracy"] == 1.0
    unseen_x, unseen_y = marker_sequences(40, seed=1)
    assert (predict_proba(result.model, unseen_x).argmax(axis=1) == unseen_y).mean() >= 0.95


def test_conv1d_learns_whether_a_marker_appears_at_all() -> None:
    result = fit("conv1d", CONV_PARAMS, marker_sequences(60, first_half=False), max_epochs=10)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 4
    unseen_x, unseen_y = marker_sequences(40, first_half=False, seed=1)
    assert (predict_proba(result.model, unseen_x).argmax(axis=1) == unseen_y).mean() >= 0.95


@pytest.mark.parametrize(
    ("arch", "params"),
    [("gru", GRU_PARAMS | {"dropout": 0.3, "hidden": [8, 8]}), ("conv1d", CONV_PARAMS | {"dropout": 0.3})],
)
def test_a_seeded_fit_is_bit_identical(arch: str, params: dict[str, Any]) -> None:
    data = marker_sequences(40)
    first, second = (fit(arch, params, data, max_epochs=3) for _ in range(2))
    other = fit(arch, params, data, seed=1, max_epochs=3)
    a, b, c = (r.model.state_dict() for r in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert first.history == second.history


@pytest.mark.parametrize(("arch", "params"), [("gru", GRU_PARAMS), ("conv1d", CONV_PARAMS | {"pool": "avg"})])
def test_stored_params_rebuild_the_same_network(arch: str, params: dict[str, Any]) -> None:
    # A model package stores arch_params as JSON and rebuilds with build_model(arch, **params).
    stored = json.loads(json.dumps(params))
    torch.manual_seed(0)
    original = build_model(arch, **params).eval()
    rebuilt = build_model(arch, **stored).eval()
    rebuilt.load_state_dict(original.state_dict())
    x = torch.randn(3, 7, 2)
    assert torch.equal(original(x), rebuilt(x))
