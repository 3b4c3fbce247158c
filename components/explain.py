"""Explanations of a candidate: which inputs its test predictions rest on.

Tabular models: permutation importance (:func:`permutation_importance`). Each raw input column
(`age`, `colour`, not its one-hot codes) is shuffled across the test rows, a few seeded
times, and the drop in macro-F1 (or accuracy) is its importance: how much the model's score
rests on that column. A column the model ignores scores exactly 0. The rows are encoded once;
shuffling a column's rows before encoding equals shuffling its encoded slots after, so each
shuffle costs one forward pass and no preprocessing.

Image models: integrated gradients (Sundararajan et al., 2017), in plain torch
(:func:`integrated_gradients`). Along the straight path from a black image to the input, the
gradient of the target class's logit is integrated (Gauss-Legendre quadrature, as Captum does
by default); times the input's difference from the black image, it gives each pixel's share of
the logit. Completeness: the shares sum to logit(input) - logit(black image), up to the
quadrature error, which :class:`ImageAttributions` reports. :func:`image_attributions` explains
a seeded sample of test images per class (target: the true class) and keeps one example per
class and each class's mean map.

:func:`explain_predictor` picks the method for the predictor's modality; :func:`plot_explanation`
draws the result. Figures use matplotlib's object-oriented API (no pyplot state).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from components.bootstrap import accuracy_macro_f1
from components.features import ImagePreprocessor, TabularPreprocessor
from components.predictor import Predictor

Metric = Literal["accuracy", "macro_f1"]
REPEATS = 5
MAX_ROWS = 10_000  # permutation importance on more test rows: a seeded sample of this many
STEPS = 32
PER_CLASS = 8
MAX_CLASSES_SHOWN = 10
_BATCH_ROWS = 16_384  # rows per forward pass of the permuted copies: bounds memory
_IG_BATCH = 512  # path points per forward/backward pass of integrated gradients
_METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


# --------------------------------------------------------------------------------------------
# Tabular: permutation importance
# --------------------------------------------------------------------------------------------


@dataclass
class FeatureImportance:
    """Permutation importance of each raw input column on labelled rows.

    Attributes:
        features: The input columns, in the model's column order.
        importances: Mean drop of the metric when the column is shuffled (positive: the model
            relies on it; about 0: it does not; negative: shuffling helped, by chance).
        stds: Standard deviation of the drop over the repeats.
        metric: `macro_f1` or `accuracy`.
        baseline: The metric on the rows as they are.
        repeats: Shuffles per column.
        n: Rows used.
        seed: Seed of the shuffles.
    """

    features: list[str]
    importances: list[float]
    stds: list[float]
    metric: str
    baseline: float
    repeats: int
    n: int
    seed: int

    def ranked(self) -> list[tuple[str, float, float]]:
        """(column, mean drop, std), largest drop first."""
        rows = zip(self.features, self.importances, self.stds, strict=True)
        return sorted(rows, key=lambda row: -row[1])

    def method(self) -> str:
        """How the figures were measured, in one sentence."""
        label = _METRIC_NAMES.get(self.metric, self.metric)
        return (
            f"Permutation importance: each input column shuffled across {self.n} test rows, {self.repeats} times "
            f"(seed {self.seed}); importance = the drop in {label} from {self.baseline:.4f}, mean ± std."
        )

    def headline(self) -> str:
        """The columns the model leans on most, in one line."""
        top = [f"{name} ({mean:+.4f})" for name, mean, _ in self.ranked()[:3]]
        return f"largest {_METRIC_NAMES.get(self.metric, self.metric)} drops when shuffled: " + ", ".join(top)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for MLflow artifacts."""
        return {
            "method": "permutation_importance",
            "metric": self.metric,
            "baseline": self.baseline,
            "repeats": self.repeats,
            "n": self.n,
            "seed": self.seed,
            "features": [{"feature": f, "importance": m, "std": s} for f, m, s in self.ranked()],
        }

    def to_markdown(self) -> str:
        """The method and a table of the columns, largest drop first."""
        lines = [self.method(), "", "| column | importance | std |", "|---|---|---|"]
        lines += [f"| {name} | {mean:+.4f} | {std:.4f} |" for name, mean, std in self.ranked()]
        return "\n".join(lines)


def _device(net: nn.Module) -> torch.device:
    parameter = next(net.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def _predicted(net: nn.Module, features: np.ndarray) -> np.ndarray:
    """Arg-max class of each row (the arg-max of the logits is that of the probabilities)."""
    device = _device(net)
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), _BATCH_ROWS):
            batch = torch.from_numpy(np.ascontiguousarray(features[start : start + _BATCH_ROWS])).to(device)
            out.append(net(batch).argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _scores(y_true: np.ndarray, predicted: np.ndarray, k: int, metric: str) -> np.ndarray:
    """The metric of each row of `predicted` (shape (r, n)) against `y_true`."""
    r = len(predicted)
    cells = (y_true[None, :] * k + predicted + (np.arange(r) * k * k)[:, None]).ravel()
    confusion = np.bincount(cells, minlength=r * k * k).reshape(r, k, k)
    accuracy, macro_f1 = accuracy_macro_f1(confusion)
    return accuracy if metric == "accuracy" else macro_f1


def permutation_importance(
    predictor: Predictor,
    frame: pd.DataFrame,
    y_true: np.ndarray,
    *,
    metric: Metric = "macro_f1",
    repeats: int = REPEATS,
    seed: int = 0,
    max_rows: int = MAX_ROWS,
) -> FeatureImportance:
    """How much a tabular model's score drops when each raw input column is shuffled.

    Args:
        predictor: A tabular predictor.
        frame: Labelled rows (the test split), holding at least the model's input columns.
        y_true: Their true class indices, in the predictor's class order.
        metric: `macro_f1` (default: on imbalanced labels, accuracy barely moves when a
            column the minority class needs is shuffled) or `accuracy`.
        repeats: Shuffles per column.
        seed: Seed of the shuffles (and of the sample, beyond `max_rows`).
        max_rows: More rows than this are sampled down to it: each shuffle holds `repeats`
            encoded copies of the rows in memory.

    Returns:
        A :class:`FeatureImportance` over the model's input columns.

    Raises:
        ValueError: Not a tabular predictor, no rows, labels and rows disagree, or an unknown metric.
    """
    preprocessor = predictor.preprocessor
    if not isinstance(preprocessor, TabularPreprocessor):
        raise ValueError("permutation importance here needs a tabular predictor")
    if metric not in _METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(_METRIC_NAMES)}")
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(frame) == 0 or len(frame) != len(y_true):
        raise ValueError(f"need labelled rows: {len(frame)} rows, {len(y_true)} labels")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    rng = np.random.default_rng(seed)
    if len(frame) > max_rows:
        rows = np.sort(rng.choice(len(frame), size=max_rows, replace=False))
        frame, y_true = frame.iloc[rows], y_true[rows]
    k, n = len(predictor.classes), len(frame)
    encoded = preprocessor.transform(frame, strict=False)
    baseline = float(_scores(y_true, _predicted(predictor.net, encoded)[None], k, metric)[0])
    means, stds = [], []
    for slots in preprocessor.column_slots().values():
        copies = np.repeat(encoded[None], repeats, axis=0)  # (repeats, n, width)
        orders = np.argsort(rng.random((repeats, n)), axis=1)  # one shuffle of the rows per repeat
        copies[:, :, slots] = encoded[orders][:, :, slots]
        predicted = _predicted(predictor.net, copies.reshape(repeats * n, -1)).reshape(repeats, n)
        drops = baseline - _scores(y_true, predicted, k, metric)
        means.append(float(drops.mean()))
        stds.append(float(drops.std()))
    return FeatureImportance(list(preprocessor.columns), means, stds, metric, baseline, repeats, n, seed)


def plot_feature_importance(importance: FeatureImportance) -> Figure:
    """Horizontal bars of each column's drop (error bars: std over the repeats), largest on top."""
    ranked = importance.ranked()[::-1]  # barh draws bottom-up
    fig = Figure(figsize=(7, max(2.5, 0.45 * len(ranked) + 1.2)))
    ax = fig.add_subplot()
    y = np.arange(len(ranked))
    means = [row[1] for row in ranked]
    colours = ["tab:blue" if m >= 0 else "tab:grey" for m in means]
    ax.barh(y, means, xerr=[row[2] for row in ranked], color=colours, capsize=3, edgecolor="black")
    ax.set_yticks(y, labels=[row[0] for row in ranked])
    ax.axvline(0, color="black", linewidth=0.8)
    label = _METRIC_NAMES.get(importance.metric, importance.metric)
    ax.set_xlabel(f"drop in {label} when the column is shuffled (from {importance.baseline:.3f})")
    ax.set_title(f"Permutation importance ({importance.n} test rows, {importance.repeats} shuffles each)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Images: integrated gradients
# --------------------------------------------------------------------------------------------


def integrated_gradients(
    net: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    baseline: np.ndarray | torch.Tensor | None = None,
    *,
    steps: int = STEPS,
    batch_size: int = _IG_BATCH,
) -> np.ndarray:
    """Integrated gradients of each input's target logit, against a baseline.

    The path integral of the gradient from `baseline` to the input is taken by Gauss-Legendre
    quadrature with `steps` nodes, the path points of several inputs batched together.

    Args:
        net: A network mapping a batch of inputs to logits (batch, classes); use eval mode.
        inputs: Model inputs (n, ...), as the network takes them (preprocessed).
        targets: The class whose logit is explained, per input (n,).
        baseline: The reference input: one broadcast to every input, or one per input (default: zeros).
        steps: Quadrature nodes along the path.
        batch_size: Path points per forward and backward pass (bounds memory).

    Returns:
        float32 attributions of the inputs' shape; each input's sum is close to
        logit(input) - logit(baseline) for its target (completeness).
    """
    device = _device(net)
    x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
    target = torch.as_tensor(targets, dtype=torch.int64, device=device).reshape(-1)
    base = torch.zeros(()) if baseline is None else torch.as_tensor(baseline, dtype=torch.float32)
    base = torch.broadcast_to(base.to(device), x.shape)  # a view: one baseline for all, or one each
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]: map to [0, 1]
    alphas = torch.as_tensor((nodes + 1) / 2, dtype=torch.float32, device=device)
    weights_t = torch.as_tensor(weights / 2, dtype=torch.float32, device=device)
    per_chunk = max(1, batch_size // steps)
    shape = (steps, 1) + (1,) * (x.dim() - 1)
    out = []
    for start in range(0, len(x), per_chunk):
        chunk, chosen = x[start : start + per_chunk], target[start : start + per_chunk]
        origin = base[start : start + per_chunk]
        delta = chunk - origin
        path = (origin + alphas.reshape(shape) * delta[None]).reshape(-1, *x.shape[1:]).requires_grad_(True)
        with torch.enable_grad():
            logits = net(path)
            picked = logits.gather(1, chosen.repeat(steps)[:, None])
            (grads,) = torch.autograd.grad(picked.sum(), path)
        average = (weights_t.reshape(shape) * grads.reshape(steps, *chunk.shape)).sum(dim=0)
        out.append((delta * average).detach().cpu())
    if not out:
        return np.zeros(tuple(x.shape), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


@dataclass
class ImageAttributions:
    """Integrated-gradients maps of a sample of test images, per class.

    Attributes:
        classes: The classes shown (at most 10), as labels.
        counts: Test images explained per class shown.
        examples: One test image per class shown, for display, (m, h, w) or (m, h, w, 3) in [0, 1].
        example_maps: Its attribution map (summed over channels), (m, h, w).
        example_predicted: The model's predicted label for each example.
        class_means: Each class's mean attribution map over its explained images, (m, h, w).
        steps: Quadrature nodes per path.
        completeness_gap: Median over the explained images of |sum of attributions -
            (logit(image) - logit(black))| relative to |logit(image) - logit(black)|.
        n: Images explained in all.
        seed: Seed of the sample.
    """

    classes: list[str]
    counts: list[int]
    examples: np.ndarray
    example_maps: np.ndarray
    example_predicted: list[str]
    class_means: np.ndarray
    steps: int
    completeness_gap: float
    n: int
    seed: int
    target: str = field(default="true class")

    def method(self) -> str:
        """How the maps were computed, in one sentence."""
        return (
            f"Integrated gradients of the {self.target}'s logit from a black image, {self.steps} Gauss-Legendre "
            f"steps, on {self.n} test images (up to {max(self.counts, default=0)} per class, seed {self.seed}); "
            f"completeness holds within {self.completeness_gap:.1%} (median)."
        )

    def headline(self) -> str:
        """One line: what was explained."""
        return f"integrated gradients on {self.n} test images of {len(self.classes)} classes"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (the maps themselves are in the figure)."""
        return {
            "method": "integrated_gradients",
            "target": self.target,
            "baseline": "black image",
            "steps": self.steps,
            "n": self.n,
            "seed": self.seed,
            "classes": list(self.classes),
            "counts": list(self.counts),
            "example_predicted": list(self.example_predicted),
            "completeness_gap": self.completeness_gap,
        }


def _display(images: np.ndarray, preprocessor: ImagePreprocessor) -> np.ndarray:
    """Raw images as [0, 1] arrays matplotlib shows: (m, h, w) grey or (m, h, w, 3) colour."""
    array = np.asarray(images, dtype=np.float64) * preprocessor.scale
    if array.ndim == 3:
        array = array[:, None]
    array = np.clip(array, 0.0, 1.0)
    if array.shape[1] == 3:
        return np.moveaxis(array, 1, -1)
    return array.mean(axis=1)


def image_attributions(
    predictor: Predictor,
    images: np.ndarray,
    y_true: np.ndarray,
    *,
    per_class: int = PER_CLASS,
    steps: int = STEPS,
    seed: int = 0,
) -> ImageAttributions:
    """Integrated gradients of a seeded sample of test images of each class (target: the true class).

    Args:
        predictor: An image predictor.
        images: Raw test images, as the predictor takes them.
        y_true: Their true class indices, in the predictor's class order.
        per_class: Images explained per class (fewer when a class has fewer).
        steps: Quadrature nodes per path.
        seed: Seed of the sample.

    Returns:
        The :class:`ImageAttributions` of the first 10 classes present.

    Raises:
        ValueError: Not an image predictor, or images and labels disagree.
    """
    preprocessor = predictor.preprocessor
    if not isinstance(preprocessor, ImagePreprocessor):
        raise ValueError("integrated gradients here need an image predictor")
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(images) == 0 or len(images) != len(y_true):
        raise ValueError(f"need labelled images: {len(images)} images, {len(y_true)} labels")
    rng = np.random.default_rng(seed)
    present = [c for c in range(len(predictor.classes)) if (y_true == c).any()][:MAX_CLASSES_SHOWN]
    chosen = [rng.permutation(np.flatnonzero(y_true == c))[:per_class] for c in present]
    rows = np.concatenate(chosen)
    features = preprocessor.transform(np.asarray(images)[rows], strict=False)
    black = preprocessor.transform(np.zeros((1, *preprocessor.shape), dtype=np.float32), strict=False)
    attributions = integrated_gradients(predictor.net, features, y_true[rows], black, steps=steps)
    with torch.inference_mode():
        device = _device(predictor.net)
        logits = predictor.net(torch.from_numpy(np.concatenate([features, black])).to(device)).cpu().numpy()
    gain = logits[np.arange(len(rows)), y_true[rows]] - logits[-1, y_true[rows]]
    total = attributions.reshape(len(rows), -1).sum(axis=1)
    gap = float(np.median(np.abs(total - gain) / np.maximum(np.abs(gain), 1e-6)))
    maps = attributions.sum(axis=1)  # (n, h, w): channels summed
    starts = np.cumsum([0] + [len(c) for c in chosen])
    first = starts[:-1]
    return ImageAttributions(
        classes=[predictor.classes[c] for c in present],
        counts=[len(c) for c in chosen],
        examples=_display(np.asarray(images)[rows[first]], preprocessor),
        example_maps=maps[first],
        example_predicted=[predictor.classes[i] for i in logits[first].argmax(axis=1)],
        class_means=np.stack([maps[a:b].mean(axis=0) for a, b in itertools.pairwise(starts)]),
        steps=steps,
        completeness_gap=gap,
        n=len(rows),
        seed=seed,
    )


def _symmetric_limit(maps: np.ndarray) -> float:
    # The 99th percentile, not the maximum: one extreme pixel would wash out every other one.
    limit = float(np.percentile(np.abs(maps), 99)) if maps.size else 0.0
    return limit if limit > 0 else 1.0


def _overlay(attribution: np.ndarray, limit: float) -> np.ndarray:
    """RGBA: red or blue by sign, opaque in proportion to |attribution|, so the image shows through."""
    strength = np.clip(attribution / limit, -1.0, 1.0)
    rgba = np.zeros((*attribution.shape, 4))
    rgba[..., 0] = strength > 0
    rgba[..., 2] = strength < 0
    rgba[..., 3] = np.abs(strength) * 0.9
    return rgba


def plot_attributions(result: ImageAttributions) -> Figure:
    """Two rows, one column per class: an example with its map overlaid, and the class's mean map.

    Red pixels raise the class's logit, blue ones lower it; each row shares one colour scale.
    """
    m = len(result.classes)
    fig = Figure(figsize=(max(4.0, 1.3 * m + 0.8), 3.6))
    axes = fig.subplots(2, max(1, m), squeeze=False)
    example_limit, mean_limit = _symmetric_limit(result.example_maps), _symmetric_limit(result.class_means)
    image = None
    for j in range(m):
        top, bottom = axes[0, j], axes[1, j]
        grey = result.examples.ndim == 3
        top.imshow(result.examples[j], cmap="gray" if grey else None, vmin=0, vmax=1)
        top.imshow(_overlay(result.example_maps[j], example_limit))
        top.set_title(f"{result.classes[j]} (pred {result.example_predicted[j]})", fontsize=8)
        image = bottom.imshow(result.class_means[j], cmap="bwr", vmin=-mean_limit, vmax=mean_limit)
        bottom.set_title(f"mean of {result.counts[j]}", fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("example", fontsize=8)
    axes[1, 0].set_ylabel("class mean", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes[1, :].tolist(), fraction=0.02, pad=0.01)
    fig.suptitle("Integrated gradients of the true class (red: raises its logit, blue: lowers it)", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# Either modality
# --------------------------------------------------------------------------------------------

Explanation = FeatureImportance | ImageAttributions


def explain_predictor(predictor: Predictor, inputs: Any, y_true: np.ndarray, *, seed: int = 0) -> Explanation | None:
    """The explanation that suits the predictor's modality, on labelled test inputs.

    Args:
        predictor: The candidate.
        inputs: Its raw test inputs: a DataFrame (tabular) or an image array.
        y_true: True class indices of the inputs, in the predictor's class order.
        seed: Seed of the shuffles or of the image sample.

    Returns:
        :class:`FeatureImportance` for a tabular model, :class:`ImageAttributions` for an image
        model, None for a modality neither method covers.
    """
    if isinstance(predictor.preprocessor, TabularPreprocessor):
        return permutation_importance(predictor, inputs, y_true, seed=seed)
    if isinstance(predictor.preprocessor, ImagePreprocessor):
        return image_attributions(predictor, inputs, y_true, seed=seed)
    return None


def plot_explanation(explanation: Explanation) -> Figure:
    """The figure of an explanation, whichever its kind."""
    if isinstance(explanation, FeatureImportance):
        return plot_feature_importance(explanation)
    return plot_attributions(explanation)
