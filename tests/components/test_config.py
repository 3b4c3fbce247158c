"""Pipeline configuration: loading, overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import ConfigError, build_config, load_pipeline, parse_override

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def minimal(**data: object) -> dict:
    return {"name": "demo", "data": {"source": "csv:x.csv", "target": "y", **data}, "train": {"arch": "mlp"}}


def test_bundled_pipelines_load_with_their_modalities() -> None:
    arrests = load_pipeline("arrests", params_path=PARAMS)
    mnist = load_pipeline("mnist", params_path=PARAMS)
    assert (arrests.data.modality, arrests.train.arch) == ("tabular", "mlp")
    assert (mnist.data.modality, mnist.train.arch) == ("image", "cnn")
    assert arrests.data.sensitive == ["colour", "sex"]


def test_overrides_are_parsed_as_yaml_and_change_the_hash() -> None:
    base = load_pipeline("arrests", params_path=PARAMS)
    changed = load_pipeline("arrests", params_path=PARAMS, overrides=["train.max_epochs=3", "train.hidden=[8, 4]"])
    assert changed.train.max_epochs == 3
    assert changed.train.hidden == [8, 4]
    assert changed.config_hash() != base.config_hash()
    assert load_pipeline("arrests", params_path=PARAMS).config_hash() == base.config_hash()
    assert parse_override("gates.evaluation.min_accuracy=null") == ("gates.evaluation.min_accuracy", None)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["train.dropout=1.5"], "train.dropout"),
        (["train.max_epoch=3"], "train.max_epoch"),
        (["train.schedule.kind=linear"], "train.schedule.kind"),
        (["data.source=ftp:somewhere"], "data.source"),
        (["split.test_fraction=0.45", "split.val_fraction=0.45"], "split"),
    ],
)
def test_bad_values_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_pipeline("arrests", params_path=PARAMS, overrides=overrides)
    assert field in str(error.value)


def test_modality_and_architecture_must_agree() -> None:
    with pytest.raises(ConfigError, match=r"train\.arch"):
        build_config({**minimal(), "train": {"arch": "cnn"}})


def test_unknown_pipeline_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        load_pipeline("nope", params_path=PARAMS)
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline(config_file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(config_file=bad)


def test_override_without_equals_is_refused() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        build_config(minimal(), ["train.max_epochs"])


def test_slice_columns_and_evaluation_limits_are_validated() -> None:
    config = build_config(minimal(sensitive=["sex"], slices=["age", "region"]))
    assert config.data.slices == ["age", "region"]
    evaluation = config.gates.evaluation
    assert (evaluation.max_slice_regression, evaluation.min_slice_size, evaluation.n_bootstrap) == (0.05, 30, 1000)
    with pytest.raises(ConfigError, match=r"data\.slices: \['age'\] listed more than once"):
        build_config(minimal(slices=["age", "age"]))
    with pytest.raises(ConfigError, match=r"data\.slices: 'y' is the target"):
        build_config(minimal(slices=["y"]))
    with pytest.raises(ConfigError, match=r"gates\.evaluation\.min_slice_size"):
        build_config({**minimal(), "gates": {"evaluation": {"min_slice_size": 0}}})
