"""Label noise: which training labels look wrong? Confident learning with cleanlab.

A fast probe model is fitted k times, each time predicting the fold it did not see, so every
row gets out-of-fold class probabilities. cleanlab compares them with the given labels: rows
whose label the probe finds very unlikely, beyond the per-class confusion the probe shows
overall, are suspects. The estimated noise rate is cleanlab's count of label issues (from the
confident joint) over the rows analysed.

The probe only has to rank rows, not to serve, so it is a classical model that fits in
seconds; `auto` fits each candidate of the modality (:func:`candidate_probes`) and keeps the
one whose out-of-fold probabilities score best against the given labels (lowest Brier score:
unlike log loss it stays finite when nearest neighbours give a class probability 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cleanlab.count
import cleanlab.filter
import cleanlab.rank
import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from components.config import DataConfig
from components.dataset import Dataset, feature_columns
from components.features import TabularPreprocessor
from components.gates import Check, GateReport, threshold_check
from components.split import SplitIndices

Probe = Literal["auto", "logistic", "boosting", "knn"]
SUSPECT_COLUMNS = ["row", "id", "given_label", "suggested_label", "score"]
IMAGE_COMPONENTS = 50


def _probe(name: str, modality: str, components: int = IMAGE_COMPONENTS) -> ClassifierMixin:
    """A fresh, unfitted probe model (images: PCA to `components` components first)."""
    if name == "logistic":
        model = LogisticRegression(max_iter=1000)
    elif name == "boosting":
        # Shallow and heavily regularised: the probe must not memorise the very labels it judges.
        model = HistGradientBoostingClassifier(max_iter=50, max_depth=3, min_samples_leaf=40, random_state=0)
    elif name == "knn":
        model = KNeighborsClassifier(n_neighbors=10, weights="distance")
    else:
        raise ValueError(f"unknown probe {name!r}; known: auto, logistic, boosting, knn")
    if modality == "image":
        return make_pipeline(PCA(components, random_state=0), model)
    return model


def candidate_probes(modality: str) -> list[str]:
    """The probes `auto` chooses from.

    Measured with 5% of labels flipped (precision of the flipped rows among the top-k
    suspects; benchmarks/label_noise.py): tables need both, as neither wins everywhere. On a
    linearly separable table logistic regression scores 0.89-0.97 and shallow boosting
    0.66-0.73; on an XOR-like table logistic regression is at chance (0.03-0.06) and boosting
    0.44-0.54; on arrests both reach about 0.4. Images: on 50 PCA components of MNIST pixels,
    nearest neighbours score 0.82-0.86 against 0.77-0.80 for logistic regression, and estimate
    0.5% noise on clean labels against 2.5%, at the same speed (about a second).
    """
    return ["logistic", "boosting"] if modality == "tabular" else ["logistic", "knn"]


@dataclass
class LabelNoiseReport:
    """What confident learning found.

    Attributes:
        n: Rows analysed.
        estimated_noise_rate: cleanlab's estimated number of label issues over `n`.
        n_issues: Rows flagged as suspects (cleanlab's filter; may differ from the estimate).
        suspects: One row per suspect, most suspicious first: `row` (position in the
            dataset), `id` (the id column's value, else the row), `given_label`,
            `suggested_label` (the probe's most likely class) and `score` (cleanlab's label
            quality in [0, 1]: lower is more suspicious).
        probe: The probe model used.
        probe_accuracy: Out-of-fold accuracy of the probe against the given labels.
    """

    n: int
    estimated_noise_rate: float
    n_issues: int
    suspects: pd.DataFrame
    probe: str = ""
    probe_accuracy: float = float("nan")

    def to_csv(self, path: Path | None = None) -> str:
        """The suspects as CSV text, written to `path` too when given."""
        text = self.suspects.to_csv(index=False)
        if path is not None:
            path.write_text(text)
        return text

    def gate_report(self, max_noise_rate: float | None) -> GateReport:
        """The `label_noise` gate: the estimated noise rate against its ceiling.

        Args:
            max_noise_rate: Largest allowed estimated noise rate; None records the rate as a
                warning-level check that never blocks.
        """
        what = f"estimated label-noise rate ({self.probe} probe, {self.n} rows)"
        if max_noise_rate is None:
            detail = (
                f"{what}: {self.estimated_noise_rate:.4f}; no max_noise_rate configured, so it is reported, not gated"
            )
            check = Check("max_noise_rate", False, detail, self.estimated_noise_rate, None, severity="warn")
        else:
            check = threshold_check(
                "max_noise_rate", self.estimated_noise_rate, max_noise_rate, at_least=False, what=what
            )
        figures = {
            "estimated_noise_rate": self.estimated_noise_rate,
            "n_issues": float(self.n_issues),
            "probe_accuracy": self.probe_accuracy,
        }
        return GateReport("label_noise", checks=[check], figures=figures)


def _probe_inputs(dataset: Dataset, data: DataConfig, rows: np.ndarray) -> np.ndarray:
    """The probe's feature matrix for `rows`."""
    if dataset.images is not None:
        images = dataset.images[rows]
        flat = images.reshape(len(rows), -1).astype(np.float32)
        return flat / 255.0 if images.dtype == np.uint8 else flat
    frame = dataset.table.iloc[rows]
    # Fitted on the analysed rows themselves: only a scaling and a category list, far less than
    # the probe learns, so this leaks nothing that matters into the out-of-fold predictions.
    return TabularPreprocessor.fit(frame, feature_columns(data, dataset.table)).transform(frame, strict=False)


def _out_of_fold(model: ClassifierMixin, x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # One thread: the probe's fits are small, and OpenMP spreading them over busy cores made
    # boosting ten times slower on the two-core machines this runs on.
    with threadpool_limits(limits=1):
        return cross_val_predict(clone(model), x, y, cv=cv, method="predict_proba")


def _brier(y: np.ndarray, proba: np.ndarray) -> float:
    onehot = np.eye(proba.shape[1])[y]
    return float(np.square(proba - onehot).sum(axis=1).mean())


def _best_probe(
    names: list[str], modality: str, x: np.ndarray, y: np.ndarray, folds: int, seed: int
) -> tuple[str, np.ndarray]:
    """The probe whose out-of-fold probabilities have the lowest Brier score, and those probabilities."""
    # PCA cannot keep more components than pixels, or than rows in a training fold (>= n/2).
    components = min(IMAGE_COMPONENTS, x.shape[1], len(x) // 2)
    fitted = {name: _out_of_fold(_probe(name, modality, components), x, y, folds, seed) for name in names}
    chosen = min(names, key=lambda name: _brier(y, fitted[name]))
    return chosen, fitted[chosen]


def _encode(labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Class codes 0..k-1 and each code's label, as given (ordered by the label's text)."""
    # Grouped by text so that mixed types (1 and "1") are one class; the label kept is a given
    # one, so suggested labels compare equal to given labels of the same class.
    _, first, codes = np.unique(labels.astype(str).to_numpy(), return_index=True, return_inverse=True)
    return codes.astype(np.int64), labels.to_numpy()[first]


def _suspects(
    dataset: Dataset, data: DataConfig, rows: np.ndarray, y: np.ndarray, proba: np.ndarray, classes: np.ndarray
) -> pd.DataFrame:
    # n_jobs=1: cleanlab otherwise forks a multiprocessing pool, and forking a process that
    # runs threads (Prefect's, a server's) can deadlock the child and hang the run forever.
    ranked = cleanlab.filter.find_label_issues(y, proba, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = cleanlab.rank.get_label_quality_scores(y, proba)
    positions = rows[ranked]
    ids = dataset.table[data.id].to_numpy()[positions] if data.id else positions
    return pd.DataFrame(
        {
            "row": positions.astype(np.int64),
            "id": ids,
            "given_label": dataset.labels.to_numpy()[positions],
            "suggested_label": classes[proba[ranked].argmax(axis=1)],
            "score": scores[ranked],
        },
        columns=SUSPECT_COLUMNS,
    )


def find_label_noise(
    dataset: Dataset,
    data: DataConfig,
    rows: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
    probe: Probe = "auto",
) -> LabelNoiseReport:
    """Find rows whose label looks wrong, and estimate the share of wrong labels.

    Args:
        dataset: The whole dataset (labels must be present at `rows`).
        data: The pipeline's data section (feature columns, id column).
        rows: Positions to analyse (the flow passes training + validation rows, so the test
            split stays untouched); None: every row.
        folds: Folds of the out-of-fold probe (fewer when the smallest class has fewer rows).
        seed: Seed of the fold assignment.
        probe: `auto`, or one of `logistic`, `boosting` (tables) or `knn` (images).

    Raises:
        ValueError: A label is missing, or a class has fewer than two rows.
    """
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    labels = dataset.labels.iloc[rows]
    if labels.isna().any():
        raise ValueError(f"cannot look for label noise: {int(labels.isna().sum())} rows have no label")
    y, classes = _encode(labels)
    smallest = int(np.bincount(y).min())
    if len(classes) < 2 or smallest < 2:
        raise ValueError("label noise needs at least two classes with two rows each")
    x = _probe_inputs(dataset, data, rows)
    names: list[str] = candidate_probes(dataset.modality) if probe == "auto" else [probe]
    chosen, proba = _best_probe(names, dataset.modality, x, y, min(folds, smallest), seed)
    suspects = _suspects(dataset, data, rows, y, proba, classes)
    return LabelNoiseReport(
        n=len(rows),
        estimated_noise_rate=cleanlab.count.num_label_issues(y, proba) / len(rows),
        n_issues=len(suspects),
        suspects=suspects,
        probe=chosen,
        probe_accuracy=float((proba.argmax(axis=1) == y).mean()),
    )


def quarantine(split: SplitIndices, report: LabelNoiseReport) -> tuple[SplitIndices, int]:
    """Drop the suspects from the training split; validation and test keep every row.

    Validation and test must measure the model on the data as it comes, so a suspect there
    stays; only what the model learns from is cleaned.

    Returns:
        The new split and how many training rows were dropped.
    """
    dropped = np.isin(split.train, report.suspects["row"].to_numpy())
    return SplitIndices(split.train[~dropped], split.val, split.test), int(dropped.sum())
