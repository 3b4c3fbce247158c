"""Explanations with known answers: a column the model ignores scores 0, IG is complete and exact on linear models."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from components.explain import (
    FeatureImportance,
    ImageAttributions,
    explain_predictor,
    image_attributions,
    integrated_gradients,
    permutation_importance,
    plot_explanation,
)
from components.features import ImagePreprocessor, TabularPreprocessor
from components.models import build_model
from components.predictor import Predictor


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.choice(["x", "y", "z"], size=n),
            "c": rng.normal(size=n),
        }
    )


def _tabular_predictor(frame: pd.DataFrame, slot_of: str, category: str | None = None) -> Predictor:
    """A linear model whose 'yes' logit reads one input slot only: a's value, or b == category."""
    preprocessor = TabularPreprocessor.fit(frame, ["a", "b", "c"])
    net = nn.Linear(preprocessor.width, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        slots = preprocessor.column_slots()[slot_of]
        index = slots.start if category is None else slots.start + preprocessor.categories["b"].index(category)
        net.weight[1, index] = 10.0
        if category is not None:
            net.bias[1] = -5.0  # one-hot 1 -> +5, 0 -> -5
    return Predictor(net, preprocessor, ["no", "yes"], "linear", {})


def test_only_the_numeric_column_the_model_reads_matters() -> None:
    frame = _frame()
    y = (frame["a"] > frame["a"].mean()).to_numpy().astype(np.int64)  # standardised a > 0
    result = permutation_importance(_tabular_predictor(frame, "a"), frame, y, metric="accuracy", seed=3)

    assert result.features == ["a", "b", "c"]  # raw columns, not one-hot codes
    assert result.baseline == 1.0
    importance = dict(zip(result.features, result.importances, strict=True))
    # Shuffling a leaves a coin flip: accuracy falls from 1 to about 0.5.
    assert 0.35 < importance["a"] < 0.65
    assert importance["b"] == importance["c"] == 0.0
    assert result.stds[1] == result.stds[2] == 0.0
    assert result.ranked()[0][0] == "a"


def test_a_categorical_column_is_shuffled_as_a_whole() -> None:
    frame = _frame()
    y = (frame["b"] == "y").to_numpy().astype(np.int64)
    result = permutation_importance(_tabular_predictor(frame, "b", category="y"), frame, y, seed=0)

    importance = dict(zip(result.features, result.importances, strict=True))
    assert result.metric == "macro_f1" and result.baseline == 1.0
    assert importance["b"] > 0.3
    assert importance["a"] == importance["c"] == 0.0


def test_permutation_importance_is_seeded_and_checks_its_inputs() -> None:
    frame = _frame()
    y = (frame["a"] > frame["a"].mean()).to_numpy().astype(np.int64)
    predictor = _tabular_predictor(frame, "a")
    first = permutation_importance(predictor, frame, y, seed=7)
    assert permutation_importance(predictor, frame, y, seed=7) == first
    assert "a (+" in first.headline() and f"{len(frame)} test rows" in first.method()
    assert first.to_dict()["features"][0]["feature"] == "a"
    sampled = permutation_importance(predictor, frame, y, seed=7, max_rows=100)
    assert sampled.n == 100 and sampled.importances[1:] == [0.0, 0.0]
    with pytest.raises(ValueError, match="labelled rows"):
        permutation_importance(predictor, frame, y[:-1])
    with pytest.raises(ValueError, match="unknown metric"):
        permutation_importance(predictor, frame, y, metric="auc")  # type: ignore[arg-type]


def test_integrated_gradients_of_a_linear_model_are_weight_times_difference() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(5, 1, 3, 4)
    baseline = torch.randn(1, 1, 3, 4)
    targets = np.array([0, 1, 2, 1, 0])
    got = integrated_gradients(net, x, targets, baseline, steps=4)
    weights = net[1].weight.detach().reshape(3, 1, 3, 4)
    expected = (weights[targets] * (x - baseline)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
def test_integrated_gradients_are_complete(activation: type[nn.Module]) -> None:
    """Attributions sum to f(x) - f(baseline) (the quadrature error is small at 32 steps)."""
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        activation(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        activation(),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(6, 1, 6, 6)
    targets = np.array([0, 1, 2, 0, 1, 2])
    attributions = integrated_gradients(net, x, targets, steps=32, batch_size=64)  # several chunks
    with torch.no_grad():
        gain = (net(x) - net(torch.zeros_like(x[:1])))[np.arange(6), targets].numpy()
    sums = attributions.reshape(6, -1).sum(axis=1)
    tolerance = 1e-4 if activation is nn.Tanh else 0.02  # ReLU kinks: coarser, still close
    np.testing.assert_allclose(sums, gain, rtol=tolerance, atol=tolerance)


class _LeftHalf(nn.Module):
    """Logits from the left half of the image only."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.tanh(x[:, :, :, :4]).flatten(1))


def test_image_attributions_stay_where_the_model_looks() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    labels = np.repeat([0, 1], 20)
    torch.manual_seed(0)
    predictor = Predictor(_LeftHalf().eval(), ImagePreprocessor.fit(images), ["cat", "dog"], "left", {})

    result = image_attributions(predictor, images, labels, per_class=5, steps=32, seed=0)

    assert result.classes == ["cat", "dog"] and result.counts == [5, 5] and result.n == 10
    assert result.examples.shape == (2, 8, 8) and 0 <= result.examples.min() <= result.examples.max() <= 1
    assert np.abs(result.example_maps[:, :, 4:]).max() == 0.0  # the right half is never read
    assert np.abs(result.class_means[:, :, :4]).max() > 0.0
    assert result.completeness_gap < 1e-3
    assert "completeness holds within" in result.method()


def test_the_project_cnn_is_explained_and_both_figures_render() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(30, 12, 12), dtype=np.uint8)
    labels = np.arange(30) % 3
    net = build_model("cnn", in_channels=1, height=12, width=12, n_classes=3, channels=[4], dropout=0.0)
    predictor = Predictor(net, ImagePreprocessor.fit(images), ["a", "b", "c"], "cnn", {})
    image_result = explain_predictor(predictor, images, labels, seed=0)
    assert isinstance(image_result, ImageAttributions) and image_result.classes == ["a", "b", "c"]

    frame = _frame()
    tabular = explain_predictor(_tabular_predictor(frame, "a"), frame, np.zeros(len(frame), dtype=np.int64))
    assert isinstance(tabular, FeatureImportance)

    for result in (image_result, tabular):
        buffer = io.BytesIO()
        plot_explanation(result).savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")
