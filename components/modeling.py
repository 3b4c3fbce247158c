"""From a split dataset to a packaged candidate, and the scoring the gates need.

The glue between the data layer (Dataset, split), preprocessing, the networks, training and
the model package, so that the flow's tasks stay one call each.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from components.config import DataConfig, PipelineConfig, ServingGate
from components.dataset import Dataset, feature_columns
from components.evaluation import EvalReport, evaluate_predictions
from components.features import fit_preprocessor
from components.gates import GateReport
from components.models import build_model
from components.predictor import Predictor
from components.split import SplitIndices
from components.training import TrainResult, train_model

if TYPE_CHECKING:
    from components.onnx_export import QuantizationReport

# What a served model needs; pinned to the versions it was trained with, passed explicitly so
# that MLflow never spends seconds inferring requirements by importing the model.
_SERVING_PACKAGES = ("torch", "numpy", "pandas", "safetensors", "onnxruntime", "mlflow")


@dataclass
class Candidate:
    """A trained candidate: the packaged predictor and how its training went."""

    predictor: Predictor
    result: TrainResult


def class_labels(dataset: Dataset) -> list[str]:
    """The label set as strings, sorted (numerically when every label is a number)."""
    values = {str(v) for v in dataset.labels.dropna().unique()}
    numeric = all(v.lstrip("-").replace(".", "", 1).isdigit() for v in values)
    return sorted(values, key=float) if numeric else sorted(values)


def encode_labels(dataset: Dataset, classes: list[str], rows: np.ndarray | None = None) -> np.ndarray:
    """Class indices (int64) of the labels at `rows` (all rows when None)."""
    labels = dataset.labels if rows is None else dataset.labels.iloc[rows]
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[str(v)] for v in labels], dtype=np.int64)


def model_inputs(dataset: Dataset, rows: np.ndarray) -> Any:
    """Raw model inputs at `rows`: a DataFrame for tables, an image array for images."""
    if dataset.images is not None:
        return dataset.images[rows]
    return dataset.table.iloc[rows]


def positive_class(classes: list[str], data: DataConfig) -> str | None:
    """The favourable label of a binary task (configured, else the last sorted label)."""
    if len(classes) != 2:
        return None
    if data.positive_label is not None:
        if data.positive_label not in classes:
            raise ValueError(f"data.positive_label {data.positive_label!r} is not a label; labels: {classes}")
        return data.positive_label
    return classes[-1]


def _architecture(config: PipelineConfig, dataset: Dataset, width: int, n_classes: int) -> dict[str, Any]:
    train = config.train
    if train.arch == "mlp":
        return {"in_features": width, "n_classes": n_classes, "hidden": list(train.hidden), "dropout": train.dropout}
    assert dataset.images is not None
    shape = dataset.images.shape
    channels, height, width_px = (1, *shape[1:]) if len(shape) == 3 else shape[1:]
    return {
        "in_channels": int(channels),
        "height": int(height),
        "width": int(width_px),
        "n_classes": n_classes,
        "channels": list(train.channels),
        "dropout": train.dropout,
    }


def _initial_network(
    config: PipelineConfig, params: dict[str, Any], classes: list[str], base: Predictor | None
) -> tuple[nn.Module, str, dict[str, Any]]:
    """The network to train, its architecture and parameters: one switch on `train.init`.

    scratch: random weights. transfer: the base's backbone under a new head for this label set
    (training freezes and later unfreezes it). warm_start: every weight of the base (the
    current champion), which must have this label set.
    """
    # Initial weights come from torch's global generator: seed it here, or a second training in
    # the same process (run --all, a scheduled worker) would start from other weights.
    torch.manual_seed(config.train.seed)
    init = config.train.init
    if init == "scratch" or base is None:
        return build_model(config.train.arch, **params), config.train.arch, params
    if init == "warm_start":
        if base.classes != classes:
            raise ValueError(f"warm_start needs the champion's label set {base.classes}, the data has {classes}")
        net = build_model(base.arch, **base.arch_params)
        net.load_state_dict(base.net.state_dict())
        return net, base.arch, dict(base.arch_params)
    params = {**base.arch_params, "n_classes": len(classes)}
    net = build_model(base.arch, **params)
    backbone: nn.Module = net.backbone  # type: ignore[assignment]
    base_backbone: nn.Module = base.net.backbone  # type: ignore[assignment]
    backbone.load_state_dict(base_backbone.state_dict())  # the head stays new
    return net, base.arch, params


def fit_candidate(
    config: PipelineConfig,
    dataset: Dataset,
    split: SplitIndices,
    *,
    metadata: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    base: Predictor | None = None,
    checkpoint_dir: Path | None = None,
) -> Candidate:
    """Fit preprocessing on the training rows, train the network, package both.

    Scratch, transfer and warm start share this one path: only the initial network (and, from
    a base model, the preprocessing its backbone was trained with) differ.

    Args:
        config: The pipeline (data columns, architecture, training settings).
        dataset: The whole dataset.
        split: Which rows train, validate and test.
        metadata: Lineage stored in the package (pipeline, data version, ...).
        on_epoch_end: Called with each epoch's history row (progress and tracking).
        base: The model to start from when `train.init` is transfer or warm_start.
        checkpoint_dir: Checkpoint the fit here, and resume from it after a crash.
    """
    classes = class_labels(dataset)
    preprocessor: Any
    if base is not None and config.train.init != "scratch":
        preprocessor = base.preprocessor
    elif dataset.modality == "tabular":
        columns = feature_columns(config.data, dataset.table)
        preprocessor = fit_preprocessor("tabular", frame=dataset.table.iloc[split.train], columns=columns)
    else:
        preprocessor = fit_preprocessor("image", images=dataset.images[split.train])  # type: ignore[index]

    def encode(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return preprocessor.transform(model_inputs(dataset, rows), strict=False), encode_labels(dataset, classes, rows)

    train_xy, val_xy = encode(split.train), encode(split.val)
    params = _architecture(config, dataset, train_xy[0].shape[-1], len(classes))
    net, arch, params = _initial_network(config, params, classes, base)
    result = train_model(net, train_xy, val_xy, config.train, on_epoch_end=on_epoch_end, checkpoint_dir=checkpoint_dir)
    predictor = Predictor(
        result.model,
        preprocessor,
        classes,
        arch,
        params,
        metadata,
        positive_class=positive_class(classes, config.data),
    )
    return Candidate(predictor, result)


def predict_rows(
    predictor: Predictor, dataset: Dataset, rows: np.ndarray, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """True class indices and predicted probabilities at `rows`, columns in `classes` order.

    Args:
        predictor: The model.
        dataset: The data.
        rows: Row positions to score.
        classes: Column order of the result (default: the predictor's); pass the challenger's
            classes when scoring the champion, so both probability arrays line up.

    Raises:
        ValueError: A label the model does not know, or `classes` is not the model's label set.
    """
    classes = list(predictor.classes) if classes is None else list(classes)
    if sorted(classes) != sorted(predictor.classes):
        raise ValueError(f"the model's labels {predictor.classes} are not {classes}")
    labels = [str(v) for v in dataset.labels.iloc[rows]]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"the model does not know the labels {unknown}")
    proba = predictor.predict_proba(model_inputs(dataset, rows), strict=False)
    proba = proba[:, [predictor.classes.index(c) for c in classes]]
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[v] for v in labels], dtype=np.int64), proba


def positive_index(predictor: Predictor) -> int:
    """Index of the predictor's positive class (binary tasks; 1 when none is set)."""
    positive = predictor.positive_class
    return 1 if positive is None else predictor.classes.index(positive)


def score(predictor: Predictor, dataset: Dataset, rows: np.ndarray) -> EvalReport:
    """Evaluate a predictor on the given rows (labels it has never seen count as errors)."""
    y_true, proba = predict_rows(predictor, dataset, rows)
    return evaluate_predictions(y_true, proba, predictor.classes, positive=positive_index(predictor))


def binary_outcomes(
    predictor: Predictor, dataset: Dataset, rows: np.ndarray, data: DataConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """True and predicted class indices at `rows`, and the favourable class index.

    For a multiclass task the favourable index is -1 (the bias audit then says it applies to
    binary classifiers only).
    """
    proba = predictor.predict_proba(model_inputs(dataset, rows), strict=False)
    y_true = encode_labels(dataset, predictor.classes, rows)
    positive = predictor.positive_class
    return y_true, proba.argmax(axis=1), (-1 if positive is None else predictor.classes.index(positive))


def load_predictor(package: Path) -> Predictor:
    """Load a model package (safetensors + spec.json, ONNX when present; never unpickles)."""
    return Predictor.load(package)


@contextmanager
def saved_package(predictor: Predictor) -> Iterator[Path]:
    """The predictor saved as a package in a temporary folder, with its ONNX export (checked against torch)."""
    from components.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        package = predictor.save(Path(tmp) / "package")
        export_onnx(predictor, package)
        yield package


def pip_requirements() -> list[str]:
    """Pinned requirements of a served model, from the running environment."""
    pins = []
    for package in _SERVING_PACKAGES:
        try:
            version = importlib.metadata.version(package).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue
        pins.append(f"{package}=={version}")
    return pins


def quantize(predictor: Predictor, package: Path, dataset: Dataset, rows: np.ndarray) -> QuantizationReport:
    """Add `model.int8.onnx` to the package; report its accuracy and size change on `rows`."""
    from components.onnx_export import quantize_int8

    features = predictor.preprocessor.transform(model_inputs(dataset, rows), strict=False)
    return quantize_int8(package, features, encode_labels(dataset, predictor.classes, rows))


def check_serving(
    package: Path,
    offline: Predictor,
    dataset: Dataset,
    rows: np.ndarray,
    pipeline: str,
    version: str,
    gate: ServingGate | None = None,
) -> GateReport:
    """Serve the registered package in its own server process and compare with offline answers.

    Like TFX's InfraValidator: what was registered must start in a real server, answer
    `/ready`, give the probabilities the evaluated torch model gives (whichever backend serves
    it) and meet the latency budget. See :func:`components.serving_check.check_serving_process`.
    """
    from components.serving_check import check_serving_process

    gate = gate or ServingGate()
    chosen = rows[: gate.sample]
    inputs = model_inputs(dataset, chosen)
    # The reference is always torch: a predictor loaded with ONNX Runtime is switched back.
    reference = copy.copy(offline)
    reference.onnx = None
    expected = reference.predict_proba(inputs, strict=False)
    if dataset.modality == "tabular":
        frame = inputs[list(offline.preprocessor.columns)]  # type: ignore[union-attr]
        key, body = "rows", json.loads(frame.to_json(orient="records"))
    else:
        key, body = "images", np.asarray(inputs).tolist()
    return check_serving_process(package, key, body, expected, version, pipeline, gate)


@dataclass
class Scoring:
    """The candidate and the champion scored on the candidate's test rows.

    Attributes:
        comparison: Both models, intervals, the paired test and the slices.
        y_true: True class indices of the test rows (the candidate's class order).
        proba: The candidate's probabilities.
        champion_proba: The champion's probabilities, columns in the candidate's class order;
            None without a champion or when it could not be scored.
        champion_error: Why the champion could not be scored, if so (the gate fails closed).
        champion_split: Both models on the champion's own test split, when the champion learnt
            from another data version (reported, not gated); else None.
    """

    comparison: Any
    y_true: np.ndarray
    proba: np.ndarray
    champion_proba: np.ndarray | None
    champion_error: str | None
    champion_split: Any = None


def score_against(
    candidate: Predictor, champion: Predictor | None, dataset: Dataset, rows: np.ndarray, config: PipelineConfig
) -> Scoring:
    """Score the candidate, and the champion on the same rows, overall and per slice.

    A champion that cannot score these rows (other labels, other columns) is not an error
    here: `champion_error` says why, and the evaluation gate fails closed on it.
    """
    from components.comparison import compare_models, slice_columns, slice_frame

    y_true, proba = predict_rows(candidate, dataset, rows)
    champion_proba, champion_error = None, None
    if champion is not None:
        try:
            champion_proba = predict_rows(champion, dataset, rows, classes=candidate.classes)[1]
        except Exception as error:  # any failure: the gate must say why
            champion_error = f"the champion could not be scored on this test data: {error}"
    gate = config.gates.evaluation
    slices = slice_frame(dataset.table.iloc[rows], slice_columns(config.data))
    comparison = compare_models(
        y_true,
        proba,
        champion_proba,
        list(candidate.classes),
        slices,
        positive=positive_index(candidate),
        min_slice_size=gate.min_slice_size,
        n_resamples=gate.n_bootstrap,
    )
    return Scoring(comparison, y_true, proba, champion_proba, champion_error)


def bias_inputs(
    candidate: Predictor, scoring: Scoring, dataset: Dataset, indices: SplitIndices, config: PipelineConfig
) -> dict[str, Any]:
    """The arguments of :func:`components.bias.audit_bias` for the candidate's test rows.

    The champion's predictions (when it was scored) let the audit check for worsening; the
    validation scores feed the optional threshold optimizer.
    """
    from components.bias import MitigationData

    positive = -1 if candidate.positive_class is None else candidate.classes.index(candidate.positive_class)
    sensitive = list(config.data.sensitive)
    mitigation = None
    if config.gates.bias.mitigation != "none" and positive >= 0:
        val_true, val_proba = predict_rows(candidate, dataset, indices.val)
        mitigation = MitigationData(
            test_scores=scoring.proba[:, positive],
            val_true=val_true,
            val_scores=val_proba[:, positive],
            val_sensitive=dataset.table.iloc[indices.val][sensitive].reset_index(drop=True),
        )
    return {
        "y_true": scoring.y_true,
        "y_pred": scoring.proba.argmax(axis=1),
        "sensitive": dataset.table.iloc[indices.test][sensitive].reset_index(drop=True),
        "gate": config.gates.bias,
        "positive": positive,
        "n_classes": len(candidate.classes),
        "champion_pred": None if scoring.champion_proba is None else scoring.champion_proba.argmax(axis=1),
        "mitigation": mitigation,
    }


def score_on_champion_split(
    candidate: Predictor,
    champion: Predictor,
    reference: Dataset,
    dataset: Dataset,
    indices: SplitIndices,
    config: PipelineConfig,
    data_version: str,
) -> Any:
    """Both models on the champion's own test split, when the champion learnt from other data.

    The champion's test rows are re-derived from its data version with the same split
    settings. Rows the candidate trained on (the same values, label included: new data often
    contains the old) are left out, since scoring the challenger on them would flatter it.
    Reported beside the gate, not gated.

    Returns:
        A ComparisonReport titled with the champion's data version, or None when no such row
        is left.
    """
    from components.comparison import compare_on_champion_split, slice_columns, slice_frame
    from components.split import split_dataset

    champion_test = split_dataset(reference, config.data, config.split).test
    trained = set(_example_keys(dataset, indices.train, config.data))
    keep = [key not in trained for key in _example_keys(reference, champion_test, config.data)]
    champion_test = champion_test[np.asarray(keep, dtype=bool)]
    if len(champion_test) == 0:
        return None
    y_true, proba = predict_rows(candidate, reference, champion_test)
    champion_proba = predict_rows(champion, reference, champion_test, classes=candidate.classes)[1]
    gate = config.gates.evaluation
    return compare_on_champion_split(
        y_true,
        proba,
        champion_proba,
        list(candidate.classes),
        slice_frame(reference.table.iloc[champion_test], slice_columns(config.data)),
        data_version=data_version,
        positive=positive_index(candidate),
        min_slice_size=gate.min_slice_size,
        n_resamples=gate.n_bootstrap,
    )


def _example_keys(dataset: Dataset, rows: np.ndarray, data: DataConfig) -> list[str]:
    """One key per example at `rows`: its input's hash and its label."""
    from components.labels import input_keys

    inputs = input_keys(dataset, data).to_numpy()[rows]
    labels = dataset.labels.iloc[rows].astype(str).to_numpy()
    return [f"{key}:{label}" for key, label in zip(inputs, labels, strict=True)]
