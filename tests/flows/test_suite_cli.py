"""`deepgate suite`: (re)build a pipeline's reviewable suite from reference data."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from components.suites import load_suite
from flows.cli import app


def test_suite_is_built_from_the_source_without_a_champion(workspace: Path) -> None:
    result = CliRunner().invoke(app, ["suite", "arrests"])
    assert result.exit_code == 0, result.output
    suite = load_suite(workspace / "expectations" / "arrests.json")
    assert suite is not None
    columns = {e["kwargs"].get("column") for e in suite["expectations"]}
    assert {"released", "colour", "age", "checks"} <= columns
    assert "learnt from the current source" in result.output


def test_unknown_data_version_is_refused_and_nothing_written(workspace: Path) -> None:
    result = CliRunner().invoke(app, ["suite", "arrests", "--from-version", "0" * 32])
    assert result.exit_code == 1
    assert "neither in the DVC cache nor on the remote" in result.output
    assert not (workspace / "expectations" / "arrests.json").exists()
