"""`deepgate score` end to end: the champion of the tiny CSV pipeline scores a file in chunks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_cli import arrests, write_pipeline  # noqa: F401  (a fixture)

from components.registry import Registry
from components.settings import load_settings

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


def test_score_writes_the_champions_predictions_and_refuses_bad_input(
    workspace: Path,
    arrests: pd.DataFrame,  # noqa: F811
    deepgate,
) -> None:
    code, output = deepgate("score", "toronto", "rows.csv", "out.parquet")
    assert code == 1 and "input file not found" in output, output

    rows = arrests.drop(columns=["released"]).iloc[:60].assign(ref=range(60))
    rows.to_csv(workspace / "rows.csv", index=False)
    code, output = deepgate("score", "toronto", "rows.csv", "out.parquet")
    assert code == 1 and "toronto has no champion yet" in output, output

    write_pipeline(workspace, arrests, **{"train.max_epochs": 1})
    assert deepgate("run", "--config", "good.yaml")[0] == 0

    threads = torch.get_num_threads()
    try:
        code, output = deepgate(
            "score",
            "toronto",
            "rows.csv",
            "out.parquet",
            "--chunk-rows",
            "25",
            "--id-column",
            "ref",
            "--threads",
            "1",
            "--json",
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)  # for the process: put it back for the tests that follow
    assert code == 0, output
    summary = json.loads(output[output.index("{") :])
    assert (summary["rows"], summary["chunks"], summary["model_version"]) == (60, 3, "1")
    assert summary["model_uri"] == "models:/deepgate-toronto/1"
    written = pd.read_parquet(workspace / "out.parquet")
    assert written["ref"].tolist() == list(range(60))
    assert (written["model_version"] == "1").all()
    with Registry(load_settings(workspace)).package("toronto", "1") as package:
        from components.predictor import Predictor

        assert written["prediction"].tolist() == Predictor.load(package).predict(rows, strict=False)

    rows.drop(columns=["age"]).to_csv(workspace / "rows.csv", index=False)
    code, output = deepgate("score", "toronto", "rows.csv", "other.csv", "--version", "1")
    assert code == 1 and "lacks the column(s) 'age'" in output, output
    assert not (workspace / "other.csv").exists()
    code, output = deepgate("score", "toronto", "rows.csv", "other.csv", "--version", "9")
    assert code == 1 and "has no version 9" in output, output
