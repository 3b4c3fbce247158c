"""Training behaviour: learning happens, early stopping, best weights, determinism, history,
the divergence guard and gradient clipping (checkpoints and resume: test_resume.py)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from components.config import AugmentConfig, PipelineConfig, ScheduleConfig, TrainConfig
from components.models import build_model
from components.schedules import lr_factor
from components.training import (
    ClassifierModule,
    TrainingDiverged,
    _bf16_forward,
    _clip_gradients,
    augment_images,
    balanced_class_weights,
    predict_proba,
    train_model,
)

Split = tuple[np.ndarray, np.ndarray]


def separable(n: int = 200, seed: int = 0) -> tuple[Split, Split]:
    """Two classes split by the line x0 + x1 = 0; 3/4 train, 1/4 validation."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    cut = n * 3 // 4
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def mlp(seed: int = 0, in_features: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)  # the initial weights are the caller's to seed
    return build_model("mlp", in_features=in_features, n_classes=2, hidden=[16], dropout=0.1)


def mlp_config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "arch": "mlp",
        "lr": 0.05,
        "batch_size": 32,
        "max_epochs": 8,
        "patience": 20,
        "accelerator": "cpu",
        "schedule": {"kind": "constant"},
    }
    return TrainConfig(**(values | overrides))


def test_mlp_learns_a_separable_set() -> None:
    train, val = separable()
    result = train_model(mlp(), train, val, mlp_config())
    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    predicted = predict_proba(result.model, val[0]).argmax(axis=1)
    assert (predicted == val[1]).mean() >= 0.9
    assert result.device == "cpu"
    assert result.resumed_from is None
    assert not result.model.training
    assert next(result.model.parameters()).device.type == "cpu"


def test_cnn_learns_bright_top_against_bright_bottom() -> None:
    rng = np.random.default_rng(0)
    n = 120
    images = rng.uniform(0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    labels = np.arange(n) % 2
    images[labels == 0, :, :4, :] += 0.7  # class 0: bright top half
    images[labels == 1, :, 4:, :] += 0.7  # class 1: bright bottom half
    torch.manual_seed(0)
    net = build_model("cnn", in_channels=1, height=8, width=8, n_classes=2, channels=[4], dropout=0.0)
    cfg = TrainConfig(arch="cnn", lr=0.01, batch_size=16, max_epochs=5, accelerator="cpu")
    result = train_model(net, (images[:90], labels[:90]), (images[90:], labels[90:]), cfg)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    probabilities = predict_proba(result.model, images[90:])
    assert (probabilities.argmax(axis=1) == labels[90:]).mean() >= 0.9


def test_early_stopping_on_random_labels_keeps_the_best_weights() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5)).astype(np.float32)
    y = rng.integers(0, 2, size=80)
    train, val = (x[:60], y[:60]), (x[60:], y[60:])
    # Memorising noise makes the validation loss rise soon after the start.
    cfg = mlp_config(lr=0.05, max_epochs=40, patience=2)
    result = train_model(mlp(in_features=5), train, val, cfg)
    assert result.stopped_early
    assert result.epochs_run < 40
    assert result.epochs_run == len(result.history)
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses))
    # Patience 2: the fit ends exactly two epochs without improvement after the best one.
    assert result.epochs_run == result.best_epoch + 3
    # The returned weights are the best epoch's, not the last epoch's.
    probabilities = torch.from_numpy(predict_proba(result.model, val[0]))
    loss = F.nll_loss(probabilities.log(), torch.from_numpy(val[1]))
    assert float(loss) == pytest.approx(losses[result.best_epoch], rel=1e-5)


def test_same_seed_gives_identical_weights_another_seed_differs() -> None:
    train, val = separable(n=80)
    cfg = mlp_config(max_epochs=2)
    first = train_model(mlp(), train, val, cfg).model.state_dict()
    second = train_model(mlp(), train, val, cfg).model.state_dict()
    other = train_model(mlp(), train, val, mlp_config(max_epochs=2, seed=1)).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_history_has_one_record_per_epoch_with_the_schedule_lr(capsys: pytest.CaptureFixture[str]) -> None:
    train, val = separable(n=60)
    schedule = {"kind": "step", "step_size": 1, "gamma": 0.5, "warmup_epochs": 1}
    cfg = mlp_config(lr=0.04, max_epochs=4, schedule=schedule)
    seen: list[dict[str, Any]] = []
    result = train_model(mlp(), train, val, cfg, on_epoch_end=seen.append, progress=True)
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/4", "epoch 2/4", "epoch 3/4", "epoch 4/4"]
    # warmup 1/2, then full rate, then halving each epoch
    assert [h["lr"] for h in result.history] == pytest.approx([0.02, 0.04, 0.02, 0.01])
    expected = [0.04 * lr_factor(e, cfg.schedule, cfg.max_epochs) for e in range(4)]
    assert [h["lr"] for h in result.history] == pytest.approx(expected)
    assert seen == result.history
    assert set(seen[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr"}
    assert not result.stopped_early and result.epochs_run == 4


def test_fit_leaves_torch_global_determinism_as_it_was() -> None:
    train, val = separable(n=40)
    before = torch.are_deterministic_algorithms_enabled()
    train_model(mlp(), train, val, mlp_config(max_epochs=1))
    assert torch.are_deterministic_algorithms_enabled() == before


def test_mismatched_inputs_and_labels_are_refused() -> None:
    (x, y), val = separable(n=40)
    with pytest.raises(ValueError, match="30 inputs but 29 labels"):
        train_model(mlp(), (x, y[:-1]), val, mlp_config(max_epochs=1))


def test_predict_proba_rows_sum_to_one_whatever_the_batch_size() -> None:
    model = mlp()
    x = np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)
    whole = predict_proba(model, x)
    batched = predict_proba(model, x, batch_size=3)
    assert whole.shape == (7, 2)
    np.testing.assert_allclose(whole.sum(axis=1), np.ones(7), rtol=1e-6)
    np.testing.assert_allclose(batched, whole, rtol=1e-6)
    # Eval mode: dropout is off, so two calls agree exactly.
    np.testing.assert_array_equal(predict_proba(model, x), whole)


def test_balanced_class_weights_by_hand() -> None:
    # counts [3, 1, 0] over 4 rows, 2 classes present: 4/(2*3), 4/(2*1), and 0 for the absent class.
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 2.0, 0.0])


def test_balanced_weights_make_an_imbalanced_mlp_predict_the_minority() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    # 10% positives, only weakly separable: unweighted training settles on the majority class.
    y = ((x[:, 0] + rng.normal(scale=1.5, size=400)) > 2.2).astype(np.int64)
    cfg = TrainConfig(arch="mlp", max_epochs=15, lr=0.01, batch_size=64, patience=15, seed=0)
    predicted = {}
    for mode in ("none", "balanced"):
        torch.manual_seed(0)
        net = build_model("mlp", in_features=2, n_classes=2, hidden=[8], dropout=0.0)
        result = train_model(net, (x, y), (x, y), cfg.model_copy(update={"class_weight": mode}))
        predicted[mode] = int(predict_proba(result.model, x).argmax(axis=1).sum())
    assert predicted["balanced"] > predicted["none"]
    assert predicted["balanced"] >= int(y.sum()) // 2


def test_an_inf_input_stops_the_fit_at_the_step_of_its_batch() -> None:
    (x, y), val = separable()
    x = x.copy()
    x[7] = np.inf
    # Epoch 0's order is the first permutation of a generator seeded with cfg.seed (0).
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    step = int((order == 7).nonzero()) // 32 + 1
    with pytest.raises(TrainingDiverged, match=rf"^loss became nan at epoch 0, step {step}$"):
        train_model(mlp(), (x, y), val, mlp_config())


def test_the_highest_lr_on_unscaled_features_trips_the_gradient_norm_guard() -> None:
    train, val = separable()
    # Features left at 1000x their scale, at the largest lr the config accepts.
    raw_train, raw_val = (train[0] * 1000, train[1]), (val[0] * 1000, val[1])
    with pytest.raises(TrainingDiverged, match=r"^gradient norm \d\.\de\+04 above 1e\+04 at epoch 0, step 2$"):
        train_model(mlp(), raw_train, raw_val, mlp_config(lr=10))


def test_the_guard_read_once_an_epoch_stops_at_the_same_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a GPU the norm is read at the epoch's end (no stall each step): the same step and norm.
    from components import training

    monkeypatch.setattr(training, "_defers_guard", lambda device: True)
    train, val = separable()
    raw_train, raw_val = (train[0] * 1000, train[1]), (val[0] * 1000, val[1])
    with pytest.raises(TrainingDiverged, match=r"^gradient norm \d\.\de\+04 above 1e\+04 at epoch 0, step 2$"):
        train_model(mlp(), raw_train, raw_val, mlp_config(lr=10))


def test_the_deferred_guard_checks_before_a_checkpoint_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from components import training

    monkeypatch.setattr(training, "_defers_guard", lambda device: True)
    train, val = separable()
    raw_train, raw_val = (train[0] * 1000, train[1]), (val[0] * 1000, val[1])
    with pytest.raises(TrainingDiverged, match=r"at epoch 0, step 2$"):
        train_model(mlp(), raw_train, raw_val, mlp_config(lr=10, checkpoint_every_n_steps=3), checkpoint_dir=tmp_path)
    assert training.checkpoint_position(tmp_path) is None  # no weights past the blow-up saved


def test_the_guard_sees_the_gradient_norm_before_clipping() -> None:
    train, val = separable()
    # Clipped, the norm would be 0.001, under the threshold; the guard still stops the fit.
    cfg = mlp_config(gradient_clip_val=1e-3, max_grad_norm=1e-2)
    with pytest.raises(TrainingDiverged, match=r"^gradient norm .+ above 0\.01 at epoch 0, step 1$"):
        train_model(mlp(), train, val, cfg)


def test_clip_gradients_returns_the_norm_before_clipping() -> None:
    layer = torch.nn.Linear(2, 1, bias=False)
    params = list(layer.parameters())
    assert _clip_gradients(params, None) == 0.0  # no gradient yet
    layer.weight.grad = torch.tensor([[3.0, 4.0]])
    assert _clip_gradients(params, None) == pytest.approx(5.0)
    assert layer.weight.grad.tolist() == [[3.0, 4.0]]  # measured, not clipped
    assert _clip_gradients(params, 1.0) == pytest.approx(5.0)
    assert layer.weight.grad.tolist() == [pytest.approx([0.6, 0.8])]  # scaled by 1/5


def test_a_clipped_high_lr_run_stays_finite_and_differs_from_the_unclipped_one() -> None:
    train, val = separable()
    raw_train, raw_val = (train[0] * 100, train[1]), (val[0] * 100, val[1])
    clipped = train_model(mlp(), raw_train, raw_val, mlp_config(lr=10, max_epochs=3, gradient_clip_val=1.0))
    plain = train_model(mlp(), raw_train, raw_val, mlp_config(lr=10, max_epochs=3))
    assert all(np.isfinite([h["train_loss"], h["val_loss"]]).all() for h in clipped.history)
    assert clipped.history != plain.history  # clipping changed the updates


def test_lr_mult_gives_the_backbone_its_own_learning_rate() -> None:
    module = ClassifierModule(mlp(), 0.1, 0.0, ScheduleConfig(kind="constant"), 1, lr_mult={"backbone": 0.1})
    optimizer = module.configure_optimizers()["optimizer"]
    # backbone: Linear(2, 16) weight and bias; head: Linear(16, 2) weight and bias
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1])
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_classifier_module_still_fits_with_the_lightning_trainer() -> None:
    (x, y), (vx, vy) = separable()
    torch.manual_seed(0)
    train_loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32, shuffle=True)
    val_loader = DataLoader(TensorDataset(torch.from_numpy(vx), torch.from_numpy(vy)), batch_size=32)
    module = ClassifierModule(mlp(), 0.05, 0.0, ScheduleConfig(kind="constant"), 4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_loader, val_loader)
    assert float(trainer.callback_metrics["val_accuracy"]) >= 0.9


def _square(size: int = 12) -> torch.Tensor:
    """One image: background 0 with a bright 4x4 square in the middle."""
    image = torch.zeros(1, 1, size, size)
    image[..., 4:8, 4:8] = 1.0
    return image


def test_augmentation_within_zero_bounds_leaves_images_as_they_are() -> None:
    images = torch.rand(5, 1, 12, 12)
    out = augment_images(images, AugmentConfig(), torch.Generator().manual_seed(0))
    assert torch.allclose(out, images, atol=1e-6)


def test_a_shift_moves_the_square_by_whole_pixels_within_the_bound() -> None:
    # A shift of a quarter of 12 pixels: up to 3 pixels either way, drawn per image.
    images = _square().repeat(64, 1, 1, 1)
    out = augment_images(images, AugmentConfig(shift=0.25), torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    # The square's brightness is moved, not lost or made (it never reaches the border).
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.full((64,), 16.0), atol=1e-4)
    rows = torch.arange(12.0).view(1, 12, 1)
    centre_y = (out[:, 0] * rows).sum(dim=(1, 2)) / 16
    offsets = centre_y - 5.5  # the square's centre sits at 5.5 before the shift
    assert offsets.abs().max() <= 3 + 1e-4
    assert offsets.abs().max() > 2  # the draws cover the range, not just small moves
    assert len({round(float(o), 3) for o in offsets}) > 30  # each image its own shift


def test_a_rotation_bound_of_90_degrees_turns_a_bar_upright_for_some_images() -> None:
    bar = torch.zeros(1, 1, 12, 12)
    bar[..., 5:7, 1:11] = 1.0  # horizontal
    out = augment_images(bar.repeat(32, 1, 1, 1), AugmentConfig(rotate=90), torch.Generator().manual_seed(1))
    vertical = out[:, 0, 1:11, 5:7].sum(dim=(1, 2)) / out[:, 0].sum(dim=(1, 2))
    assert vertical.max() > 0.8  # some turned near 90 degrees
    assert vertical.min() < 0.4  # some barely turned


def test_augmentation_is_drawn_from_the_generator_alone() -> None:
    images = torch.rand(8, 1, 12, 12)
    cfg = AugmentConfig(shift=0.1, rotate=15, scale=0.1)
    first = augment_images(images, cfg, torch.Generator().manual_seed(3))
    again = augment_images(images, cfg, torch.Generator().manual_seed(3))
    other = augment_images(images, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_an_augmented_fit_is_reproducible_and_differs_from_the_plain_one() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 0.3, size=(64, 1, 8, 8)).astype(np.float32)
    labels = np.arange(64) % 2
    images[labels == 0, :, :4, :] += 0.7
    images[labels == 1, :, 4:, :] += 0.7

    def fit(augment: dict[str, float] | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = build_model("cnn", in_channels=1, height=8, width=8, n_classes=2, channels=[4], dropout=0.0)
        cfg = TrainConfig(arch="cnn", lr=0.01, batch_size=16, max_epochs=2, accelerator="cpu", augment=augment)
        return train_model(net, (images[:48], labels[:48]), (images[48:], labels[48:]), cfg).model.state_dict()

    augmented, again, plain = fit({"shift": 0.2}), fit({"shift": 0.2}), fit(None)
    assert all(torch.equal(augmented[k], again[k]) for k in augmented)
    assert not all(torch.equal(augmented[k], plain[k]) for k in augmented)


def test_augmentation_of_tabular_data_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"train\.augment"):
        PipelineConfig.model_validate(
            {
                "name": "people",
                "data": {"source": "csv:people.csv", "target": "label"},
                "train": {"arch": "mlp", "augment": {"shift": 0.1}},
            }
        )


def test_the_bf16_forward_matches_fabrics_bf16_module() -> None:
    from lightning.fabric import Fabric

    torch.manual_seed(0)
    net = build_model("cnn", in_channels=1, height=8, width=8, n_classes=3, channels=[4, 8], dropout=0.0)
    inputs = torch.randn(16, 1, 8, 8)
    fabric = Fabric(accelerator="cpu", devices=1, precision="bf16-mixed")
    wrapped = fabric.setup_module(net)
    expected = wrapped(inputs)
    got = _bf16_forward(net, "cpu", inputs)
    assert got.dtype == expected.dtype == torch.float32
    assert torch.equal(got, expected)


def test_a_bf16_fit_on_cpu_learns_and_says_so() -> None:
    train, val = separable()
    result = train_model(mlp(), train, val, mlp_config(precision="bf16-mixed"))
    assert result.precision == "bf16-mixed"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_accuracy"] >= 0.9
