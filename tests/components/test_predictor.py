"""The model package: save/load gives identical predictions, holds no pickle, fails clearly when damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.features import ImagePreprocessor, InputError, TabularPreprocessor
from components.models import build_model
from components.predictor import SPEC_FILE, WEIGHTS_FILE, ModelPackageError, Predictor

FRAME = pd.DataFrame(
    {
        "age": [20, 30, 40, 50, 25, 35],
        "sex": ["Male", "Female", "Male", "Female", "Male", "Male"],
        "employed": [True, False, True, True, False, True],
    }
)


def tabular_predictor() -> Predictor:
    torch.manual_seed(0)
    prep = TabularPreprocessor.fit(FRAME, ["age", "sex", "employed"])
    params = {"in_features": prep.width, "n_classes": 2, "hidden": [8], "dropout": 0.5}
    net = build_model("mlp", **params)
    return Predictor(net, prep, ["No", "Yes"], "mlp", params, {"pipeline": "toy"}, positive_class="Yes")


def image_predictor() -> Predictor:
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    prep = ImagePreprocessor.fit(images)
    params = {"in_channels": 1, "height": 8, "width": 8, "n_classes": 3, "channels": [4], "dropout": 0.25}
    net = build_model("cnn", **params)
    # Non-trivial BatchNorm statistics, so that the test sees them survive the round trip.
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(prep.transform(images)))
    return Predictor(net, prep, ["0", "1", "2"], "cnn", params)


def test_tabular_round_trip_identical(tmp_path: Path) -> None:
    predictor = tabular_predictor()
    before = predictor.predict_proba(FRAME)
    loaded = Predictor.load(predictor.save(tmp_path / "model"))
    after = loaded.predict_proba(FRAME)
    assert before.shape == (6, 2) and before.dtype == np.float32
    np.testing.assert_allclose(before.sum(axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(before, after)
    assert loaded.classes == ["No", "Yes"] and loaded.positive_class == "Yes"
    assert loaded.metadata == {"pipeline": "toy"}
    assert not loaded.net.training  # eval mode: dropout off, so repeated calls agree
    assert np.array_equal(loaded.predict_proba(FRAME), after)


def test_records_fast_path_matches_frame() -> None:
    predictor = tabular_predictor()
    records = FRAME.to_dict(orient="records")
    assert np.array_equal(predictor.predict_records(records), predictor.predict_proba(FRAME))
    assert np.array_equal(predictor.predict_proba(records), predictor.predict_proba(FRAME))
    labels = predictor.predict(FRAME)
    assert labels == [["No", "Yes"][i] for i in predictor.predict_proba(FRAME).argmax(axis=1)]


def test_image_round_trip_identical(tmp_path: Path) -> None:
    predictor = image_predictor()
    batch = np.random.default_rng(1).integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    before = predictor.predict_proba(batch)
    loaded = Predictor.load(predictor.save(tmp_path / "model"))
    assert before.shape == (5, 3)
    assert np.array_equal(before, loaded.predict_proba(batch))
    assert np.array_equal(before, loaded.predict_proba(batch.tolist()))
    assert loaded.modality == "image"
    assert loaded.input_schema() == [{"name": "image", "kind": "image", "shape": [1, 8, 8], "range": [0, 255]}]
    with pytest.raises(InputError, match="shape"):
        loaded.predict_proba(np.zeros((1, 7, 8)))


def test_spec_is_plain_json_without_pickle(tmp_path: Path) -> None:
    directory = tabular_predictor().save(tmp_path / "model")
    assert sorted(p.name for p in directory.iterdir()) == [WEIGHTS_FILE, SPEC_FILE]
    spec = json.loads((directory / SPEC_FILE).read_text())
    assert spec["format"] == "deepgate-model/1"
    assert spec["modality"] == "tabular" and spec["arch"] == "mlp"
    assert spec["arch_params"] == {"in_features": 5, "n_classes": 2, "hidden": [8], "dropout": 0.5}
    assert spec["classes"] == ["No", "Yes"] and spec["positive_class"] == "Yes"
    assert spec["preprocessor"]["kind"] == "tabular"
    # safetensors files start with an 8-byte header length and a JSON header, never a pickle opcode.
    raw = (directory / WEIGHTS_FILE).read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header])["__metadata__"] == {"format": "pt"}
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:8]


def test_corrupt_weights_raise_clear_error(tmp_path: Path) -> None:
    directory = tabular_predictor().save(tmp_path / "model")
    (directory / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelPackageError, match="corrupt or not a safetensors file"):
        Predictor.load(directory)


def test_missing_files_and_bad_spec_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match=r"spec.json does not exist"):
        Predictor.load(tmp_path / "nowhere")
    directory = tabular_predictor().save(tmp_path / "model")
    (directory / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelPackageError, match=r"model.safetensors does not exist"):
        Predictor.load(directory)
    (directory / SPEC_FILE).write_text("{not json")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        Predictor.load(directory)
    (directory / SPEC_FILE).write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ModelPackageError, match="unknown package format"):
        Predictor.load(directory)


def test_weights_that_do_not_fit_the_arch_raise(tmp_path: Path) -> None:
    directory = tabular_predictor().save(tmp_path / "model")
    spec = json.loads((directory / SPEC_FILE).read_text())
    spec["arch_params"]["hidden"] = [16]
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ModelPackageError, match="does not fit arch 'mlp'"):
        Predictor.load(directory)


def test_classes_must_match_outputs() -> None:
    predictor = tabular_predictor()
    with pytest.raises(ValueError, match="2 outputs but 3 classes"):
        Predictor(predictor.net, predictor.preprocessor, ["a", "b", "c"], "mlp", predictor.arch_params)


def test_library_leaves_torch_threads_alone() -> None:
    threads = torch.get_num_threads()
    tabular_predictor().predict_proba(FRAME)
    assert torch.get_num_threads() == threads
