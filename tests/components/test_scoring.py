"""Batch scoring: every input format gives the model's own predictions, whatever the chunk size,
with the version on every row; bad input is refused before any output exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from sklego.datasets import load_arrests

from components.config import DataConfig
from components.dataset import feature_columns
from components.features import TabularPreprocessor
from components.models import build_model
from components.predictor import Predictor
from components.scoring import MODEL_VERSION, PREDICTION, ScoringError, missing_columns, score_file

ROWS = 50


@pytest.fixture(scope="module")
def arrests() -> pd.DataFrame:
    return load_arrests(as_frame=True).iloc[:400].reset_index(drop=True)


@pytest.fixture(scope="module")
def predictor(arrests: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """A small arrests MLP, fitted for a few steps and read back from its package."""
    torch.manual_seed(0)
    columns = feature_columns(DataConfig(source="sklego:arrests", target="released"), arrests)
    prep = TabularPreprocessor.fit(arrests, columns)
    params = {"in_features": prep.width, "n_classes": 2, "hidden": [8], "dropout": 0.0}
    net = build_model("mlp", **params)
    x = torch.from_numpy(prep.transform(arrests))
    y = torch.from_numpy((arrests["released"] == "Yes").to_numpy().astype(np.int64))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(30):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    trained = Predictor(net, prep, ["No", "Yes"], "mlp", params, positive_class="Yes")
    return Predictor.load(trained.save(tmp_path_factory.mktemp("model")))


@pytest.fixture
def rows(arrests: pd.DataFrame) -> pd.DataFrame:
    """50 rows to score, with an id column and an extra column the model does not use."""
    frame = arrests.iloc[:ROWS].drop(columns=["released"]).reset_index(drop=True)
    return frame.assign(row_id=np.arange(1000, 1000 + ROWS), note="x")


def write_input(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:  # one array per column; strings fixed-width (no pickles), deflated to test streaming
        np.savez_compressed(
            path, **{c: frame[c].to_numpy(dtype=None if frame[c].dtype.kind in "iuf" else str) for c in frame}
        )
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_each_format_scores_like_the_model(
    suffix: str, rows: pd.DataFrame, predictor: Predictor, tmp_path: Path
) -> None:
    source = write_input(rows, tmp_path / f"in{suffix}")
    out = tmp_path / "out.parquet"
    result = score_file(predictor, source, out, "7", chunk_rows=16, id_column="row_id", model_uri="models:/m/7")

    written = pd.read_parquet(out)
    expected = predictor.predict_proba(rows, strict=False)
    assert (result.rows, result.chunks, result.model_version) == (ROWS, 4, "7")
    assert list(written.columns) == ["row_id", PREDICTION, "proba_No", "proba_Yes", MODEL_VERSION]
    assert written["row_id"].tolist() == rows["row_id"].tolist()
    np.testing.assert_allclose(written[["proba_No", "proba_Yes"]].to_numpy(), expected, rtol=0, atol=1e-6)
    assert written[PREDICTION].tolist() == predictor.labels(expected)
    assert (written[MODEL_VERSION] == "7").all()
    assert pq.read_schema(out).metadata[b"deepgate.model"] == b"models:/m/7"
    assert written[PREDICTION].nunique() == 2  # a fitted model, not a constant answer


def test_chunk_boundaries_do_not_change_predictions(rows: pd.DataFrame, predictor: Predictor, tmp_path: Path) -> None:
    source = write_input(rows, tmp_path / "in.csv")
    seen: list[int] = []
    small = score_file(predictor, source, tmp_path / "small.csv", "3", chunk_rows=7, on_progress=seen.append)
    whole = score_file(predictor, source, tmp_path / "whole.csv", "3", chunk_rows=ROWS)

    assert (small.chunks, whole.chunks) == (8, 1)
    assert seen == [7, 14, 21, 28, 35, 42, 49, 50]
    chunked, single = pd.read_csv(tmp_path / "small.csv"), pd.read_csv(tmp_path / "whole.csv")
    assert len(chunked) == ROWS  # one header, no repeated header rows
    pd.testing.assert_frame_equal(chunked, single)
    assert chunked[MODEL_VERSION].astype(str).eq("3").all()


def test_missing_columns_are_named_and_nothing_is_written(
    rows: pd.DataFrame, predictor: Predictor, tmp_path: Path
) -> None:
    for suffix in (".csv", ".parquet", ".npz"):
        source = write_input(rows.drop(columns=["age", "sex"]), tmp_path / f"in{suffix}")
        out = tmp_path / "out.parquet"
        assert missing_columns(source, predictor, "ref") == ["age", "sex", "ref"]  # from the header alone
        with pytest.raises(ScoringError, match="'age', 'sex'"):
            score_file(predictor, source, out, "1")
        with pytest.raises(ScoringError, match="'ref'"):
            score_file(predictor, write_input(rows, source), out, "1", id_column="ref")
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"in{suffix}"]
        source.unlink()


def test_a_failure_mid_run_leaves_the_previous_output_untouched(
    rows: pd.DataFrame, predictor: Predictor, tmp_path: Path
) -> None:
    bad = rows.astype({"age": object})
    bad.loc[40, "age"] = "forty"  # in the last chunk: earlier chunks were already written
    source = write_input(bad, tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")

    with pytest.raises(ScoringError, match="column 'age': row 40 holds non-numeric text"):
        score_file(predictor, source, out, "1", chunk_rows=7, strict=True)
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]
    # Not strict (the default): the bad cell is imputed like a missing one and the run completes.
    assert score_file(predictor, source, out, "1", chunk_rows=7).rows == ROWS


def test_images_stream_from_a_compressed_npz(tmp_path: Path) -> None:
    from test_predictor import image_predictor

    predictor = image_predictor()
    images = np.random.default_rng(2).integers(0, 256, size=(23, 8, 8), dtype=np.uint8)
    np.savez_compressed(tmp_path / "in.npz", images=images, key=np.arange(23))
    result = score_file(predictor, tmp_path / "in.npz", tmp_path / "out.parquet", "5", chunk_rows=5, id_column="key")

    written = pd.read_parquet(tmp_path / "out.parquet")
    assert (result.rows, result.chunks) == (23, 5)
    assert written["key"].tolist() == list(range(23))
    probabilities = written[["proba_0", "proba_1", "proba_2"]].to_numpy()
    np.testing.assert_allclose(probabilities, predictor.predict_proba(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "output", "message"),
    [
        ("missing.csv", "out.csv", "input file not found"),
        ("in.json", "out.csv", "unknown input format '.json'"),
        ("in.csv", "out.txt", "unknown output format '.txt'"),
        ("in.csv", "nowhere/out.csv", "output folder does not exist"),
    ],
)
def test_bad_paths_are_refused(
    name: str, output: str, message: str, rows: pd.DataFrame, predictor: Predictor, tmp_path: Path
) -> None:
    write_input(rows, tmp_path / "in.csv")
    (tmp_path / "in.json").write_text("{}")
    with pytest.raises(ScoringError, match=message):
        score_file(predictor, tmp_path / name, tmp_path / output, "1")
